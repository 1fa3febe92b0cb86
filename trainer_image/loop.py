"""The per-worker training loop: the same function runs in-process (world size 1) and under Ray Train.

Determinism is by construction rather than by saved RNG streams: the data order of an epoch
is a seeded permutation, a step's micro-batches are a pure function of (step, rank), and the
RNG for dropout is reseeded from (seed, step, rank) before every step. A run resumed from a
checkpoint at step k therefore sees exactly the batches and dropout masks an uninterrupted run
sees from step k on, and its losses match.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec, HftConfig, Hyperparameters

from . import checkpoint as ckpt
from . import methods, methods_hft, model_init, objectives
from .errors import TrainerConfigError
from .progress import ThroughputMeter, make_progress

log = logging.getLogger(__name__)


class SimulatedFailure(RuntimeError):
    """Raised by `fail_after_step` to stand in for a killed worker (tests, chaos drills)."""


@dataclass
class LoopConfig:
    """Everything a worker needs; picklable, so Ray can ship it to remote workers."""

    spec: FineTuneJobSpec
    model_dir: str
    train: Any
    """Training samples (SftSample or PreferenceSample list), or a Ray ObjectRef to them."""
    checkpoint_dir: str
    pad_id: int
    use_gpu: bool = False
    sink: Any = None
    """A ProgressSink called on rank 0 (under Ray: a relay to the driver's sinks)."""
    fail_after_step: int | None = None
    """Raise SimulatedFailure right after this step (and its checkpoint, if one is due)."""


@dataclass
class LoopResult:
    losses: list[float]
    """Global loss of every optimizer step, from step 1 (resumed runs include the restored ones)."""
    start_step: int
    total_steps: int
    checkpoint: str
    """The final checkpoint: the trained state the driver evaluates and exports."""
    tokens_per_second: float
    trainable_parameters: int
    total_parameters: int
    hft_selections: dict[int, list] = field(default_factory=dict)


@dataclass(frozen=True)
class StepPlan:
    sequences: int
    steps_per_epoch: int
    total_steps: int
    per_step: int
    """Sequences consumed per optimizer step over all workers."""


# ---------------------------------------------------------------- pure planning


def plan_steps(num_sequences: int, world_size: int, hp: Hyperparameters) -> StepPlan:
    per_step = world_size * hp.batch_size * hp.gradient_accumulation_steps
    steps_per_epoch = max(1, num_sequences // per_step)
    total = hp.max_steps if hp.max_steps is not None else max(1, math.ceil(hp.epochs * steps_per_epoch))
    return StepPlan(num_sequences, steps_per_epoch, total, per_step)


def lr_at(step: int, total_steps: int, hp: Hyperparameters) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the schedule."""
    warmup = math.ceil(hp.warmup_ratio * total_steps)
    if step < warmup:
        return hp.learning_rate * (step + 1) / warmup
    if hp.scheduler == "constant":
        return hp.learning_rate
    progress = (step - warmup) / max(1, total_steps - warmup)
    if hp.scheduler == "linear":
        return hp.learning_rate * max(0.0, 1.0 - progress)
    return hp.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"order:{seed}:{epoch}").shuffle(order)
    return order


def micro_batch_indices(step: int, micro: int, rank: int, plan: StepPlan, hp: Hyperparameters, seed: int) -> list[int]:
    """Indices of the sequences worker `rank` uses for micro-batch `micro` of `step`."""
    epoch, in_epoch = divmod(step, plan.steps_per_epoch)
    order = epoch_order(plan.sequences, seed=seed, epoch=epoch)
    world = plan.per_step // (hp.batch_size * hp.gradient_accumulation_steps)
    base = (in_epoch * hp.gradient_accumulation_steps + micro) * world * hp.batch_size + rank * hp.batch_size
    return [order[(base + j) % plan.sequences] for j in range(hp.batch_size)]


def build_sequences(samples: list, spec: FineTuneJobSpec) -> list:
    """What one batch row is: packed rows for SFT with packing, else the samples themselves."""
    from .data_collate import pack

    if spec.objective.type == "sft" and spec.preprocessing.packing:
        return pack(samples, spec.preprocessing.max_seq_length, seed=spec.hyperparameters.seed)
    return list(samples)


def collate(rows: list, spec: FineTuneJobSpec, pad_id: int) -> tuple[dict, int]:
    """(batch tensors, non-padding tokens) for one micro-batch."""
    from .data_collate import collate_preference, collate_sft

    if spec.objective.type == "sft":
        batch = collate_sft(rows, pad_id=pad_id, packing=spec.preprocessing.packing)
        return batch, sum(len(r.input_ids) for r in rows)
    batch = collate_preference(rows, pad_id=pad_id)
    tokens = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
    return batch, tokens


def batch_count(batch: dict, spec: FineTuneJobSpec) -> float:
    """What the loss of a micro-batch is normalised over: loss tokens (SFT) or pairs (DPO/ORPO)."""
    if spec.objective.type == "sft":
        return float(batch["num_loss_tokens"])
    return float(batch["chosen_input_ids"].size(0))


# ---------------------------------------------------------------- worker environment


def world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def device_for(use_gpu: bool) -> str:
    import torch

    if use_gpu and torch.cuda.is_available():
        try:
            import ray.train.torch

            return str(ray.train.torch.get_device())
        except Exception:  # noqa: BLE001 - not under Ray
            return "cuda"
    return "cpu"


def _resolve(data: Any) -> list:
    try:
        import ray

        if isinstance(data, ray.ObjectRef):
            return ray.get(data)
    except ImportError:
        pass
    return data


# ---------------------------------------------------------------- optimizer


def build_optimizer(model, hp: Hyperparameters):
    """AdamW over trainable parameters only; no weight decay on biases and norms."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or name.endswith(".bias") else decay).append(p)
    groups = [g for g in (
        {"params": decay, "weight_decay": hp.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ) if g["params"]]
    if not groups:
        raise TrainerConfigError("the method leaves no trainable parameters; check spec.method")
    return torch.optim.AdamW(groups, lr=hp.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def optimizer_param_ids(optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


# ---------------------------------------------------------------- the loop


def load_trained_state(model, spec: FineTuneJobSpec, ref: ckpt.CheckpointRef) -> None:
    """Put a checkpoint's trained tensors into a model prepared with `methods.apply_method`."""
    import torch

    state = ckpt.load_trainable(ref)
    expected = methods.persistent_parameter_names(model, spec)
    missing = expected - set(state)
    params = dict(model.named_parameters())
    unknown = set(state) - set(params)
    if missing or unknown:
        raise TrainerConfigError(
            f"checkpoint {ref.path} does not match spec.method ({spec.method.type}): "
            f"{len(missing)} parameters missing, {len(unknown)} unknown; it was written by a different "
            "spec; point spec.checkpointing.uri at an empty location to start over"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def train_loop(cfg: LoopConfig) -> LoopResult:
    """Train on this worker; all workers run it together (torch.distributed already set up by Ray)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    spec, hp = cfg.spec, cfg.spec.hyperparameters
    rank, world_size = world()
    device = device_for(cfg.use_gpu)
    seed = hp.seed

    seed_all(seed)
    model = model_init.load_model(spec, Path(cfg.model_dir), device=device)
    seed_all(seed)  # adapter init is identical on every worker and in every (resumed) run
    model = methods.apply_method(model, spec)
    model.train()
    trainable_count, total_count = methods.parameter_counts(model)
    if rank == 0:
        log.info("method %s: %d of %d parameters trainable (%.2f%%)", spec.method.type, trainable_count,
                 total_count, 100.0 * trainable_count / max(1, total_count))
    reference = None
    if spec.objective.type == "dpo":
        reference = objectives.Reference(model, adapter=methods.is_adapter_method(spec))

    sequences = build_sequences(_resolve(cfg.train), spec)
    if not sequences:
        raise TrainerConfigError("no training samples: check spec.datasets and preprocessing")
    plan = plan_steps(len(sequences), world_size, hp)
    if plan.sequences < plan.per_step and rank == 0:
        log.warning(
            "%d training sequences are fewer than one optimizer step takes (%d = workers x batchSize x "
            "gradientAccumulationSteps): sequences repeat within a step; lower batchSize or add data",
            plan.sequences, plan.per_step,
        )

    params_by_name = dict(model.named_parameters())
    names_by_id = {id(p): n for n, p in params_by_name.items()}
    start_step, losses, saved_optimizer = 0, [], None
    latest = ckpt.latest_checkpoint(cfg.checkpoint_dir)
    if latest is not None:
        meta = latest.meta()
        if meta.get("totalSteps") != plan.total_steps or meta.get("worldSize") != world_size:
            log.warning(
                "checkpoint %s was written with totalSteps=%s worldSize=%s; this run has %s and %s: "
                "resuming anyway (the schedule follows this run)",
                latest.path, meta.get("totalSteps"), meta.get("worldSize"), plan.total_steps, world_size,
            )
        load_trained_state(model, spec, latest)
        saved_optimizer = ckpt.load_optimizer(latest)
        start_step, losses = latest.step, list(meta.get("losses", []))[: latest.step]
        if rank == 0:
            log.info("resuming from %s at step %d of %d", latest.path, start_step, plan.total_steps)

    hft = (spec.method.hft or HftConfig()) if spec.method.type == "hft" else None
    stage = 0 if hft is not None else None
    selections: dict[int, list] = {}
    if hft is not None:
        stage = methods_hft.stage_of(start_step, plan.total_steps, hft.stages)
        selections[stage] = methods_hft.apply_stage(model, seed=hft.seed, stage=stage)

    optimizer = build_optimizer(model, hp)
    if saved_optimizer is not None:
        ckpt.restore_optimizer_state(optimizer, saved_optimizer, params_by_name)

    def wrap():
        if world_size == 1:
            return model
        return DDP(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)

    forward_model = wrap()
    meter = ThroughputMeter(start_step, plan.total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    last_ref: ckpt.CheckpointRef | None = latest if latest is not None and latest.step >= plan.total_steps else None

    for step in range(start_step, plan.total_steps):
        if hft is not None:
            new_stage = methods_hft.stage_of(step, plan.total_steps, hft.stages)
            if new_stage != stage:
                kept = ckpt.optimizer_state_by_name(optimizer, names_by_id)
                stage = new_stage
                selections[stage] = methods_hft.apply_stage(model, seed=hft.seed, stage=stage)
                optimizer = build_optimizer(model, hp)
                ckpt.restore_optimizer_state(optimizer, kept, params_by_name)
                trainable = [p for p in model.parameters() if p.requires_grad]
                forward_model = wrap()  # DDP registers hooks only for parameters that train now
        lr = lr_at(step, plan.total_steps, hp)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(seed * 1_000_003 + step * 1_009 + rank)
        random.seed(seed * 1_000_003 + step * 1_009 + rank)

        micro_batches = []
        for k in range(hp.gradient_accumulation_steps):
            rows = [sequences[i] for i in micro_batch_indices(step, k, rank, plan, hp, seed)]
            batch, tokens = collate(rows, spec, cfg.pad_id)
            micro_batches.append(({key: v.to(device) for key, v in batch.items()}, tokens))
        local_count = sum(batch_count(b, spec) for b, _ in micro_batches)
        (global_count,) = all_reduce_sum([local_count])
        global_count = max(global_count, 1.0)

        loss_sum, tokens = 0.0, 0
        for k, (batch, n_tokens) in enumerate(micro_batches):
            sync = contextlib.nullcontext()
            if forward_model is not model and k < len(micro_batches) - 1:
                sync = forward_model.no_sync()
            with sync:
                if spec.objective.type == "sft":
                    parts = objectives.sft(forward_model, batch)
                else:
                    parts = objectives.preference(
                        spec.objective.type, forward_model, batch, beta=spec.objective.beta,
                        pad_id=cfg.pad_id, reference=reference, unwrapped=model,
                    )
                # DDP averages gradients over workers; scaling by world size makes it a sum.
                (parts.total * (world_size / global_count)).backward()
            loss_sum += float(parts.total.detach())
            tokens += n_tokens
        if hp.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, hp.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        global_loss_sum, global_tokens = all_reduce_sum([loss_sum, float(tokens)])
        loss = global_loss_sum / global_count
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {step + 1}; lower hyperparameters.learningRate or check the data"
            )
        losses.append(loss)
        meter.add_tokens(int(global_tokens))
        done = step + 1
        if rank == 0 and cfg.sink is not None:
            cfg.sink.on_progress(make_progress(
                step=done, total_steps=plan.total_steps, epoch=done / plan.steps_per_epoch, loss=loss,
                learning_rate=lr, tokens_per_second=meter.tokens_per_second(), eta_seconds=meter.eta_seconds(done),
            ))
        if done % spec.checkpointing.every_steps == 0 or done == plan.total_steps:
            if rank == 0:
                persistent = methods.persistent_parameter_names(model, spec)
                last_ref = ckpt.save_checkpoint(
                    cfg.checkpoint_dir, done,
                    trainable={n: params_by_name[n] for n in sorted(persistent)},
                    optimizer=ckpt.optimizer_state_by_name(optimizer, names_by_id),
                    meta={
                        "totalSteps": plan.total_steps, "worldSize": world_size, "seed": seed,
                        "method": spec.method.type, "objective": spec.objective.type,
                        "dataPosition": {"epoch": step // plan.steps_per_epoch,
                                         "stepInEpoch": done % plan.steps_per_epoch},
                        "hftStage": stage, "losses": losses, "rng": "reseeded per step from (seed, step, rank)",
                    },
                    keep_last=spec.checkpointing.keep_last,
                )
            barrier()
        if cfg.fail_after_step is not None and done == cfg.fail_after_step:
            raise SimulatedFailure(f"simulated failure after step {done}")

    if last_ref is None:
        last_ref = ckpt.latest_checkpoint(cfg.checkpoint_dir)
    return LoopResult(
        losses=losses,
        start_step=start_step,
        total_steps=plan.total_steps,
        checkpoint=str(last_ref.path) if last_ref else "",
        tokens_per_second=meter.tokens_per_second(),
        trainable_parameters=trainable_count,
        total_parameters=total_count,
        hft_selections=selections,
    )
