"""The per-worker training loop: the same function runs in-process (world size 1) and under Ray Train.

Determinism is by construction rather than by saved RNG streams: the data order of an epoch
is a seeded permutation, a step's micro-batches are a pure function of (step, rank), and the
RNG for dropout is reseeded from (seed, step, rank) before every step. A run resumed from a
checkpoint at step k therefore sees exactly the batches and dropout masks an uninterrupted run
sees from step k on, and its losses match. (Dropout masks are drawn per forward, so this holds
for the same forward token budget; a resume under another budget says so in a warning.)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec, HftConfig, Hyperparameters

from . import checkpoint as ckpt
from . import checkpoint_remote
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
    attention: str = "sdpa"
    """transformers attn_implementation. With "flex_attention" packed batches carry no mask:
    transformers finds the samples from the restarting position_ids and builds a block mask
    whose fully masked tiles are skipped (the 4D SDPA mask computes every tile)."""
    compile_blocks: bool = False
    """torch.compile every transformer block (fuses the elementwise work around the matmuls;
    pays on GPUs after a compile of a minute or so; off by default)."""
    forward_tokens: int | None = None
    """Token budget of one forward (rows x padded width; a preference pair is two rows): a
    micro-batch above it runs as several forwards of whole rows into the same gradient, and a
    single row wider than the budget is a forward of its own. None: FORWARD_TOKENS_CPU on CPU,
    no limit on GPUs; 0: no limit."""
    checkpoint_remote: str | None = None
    """s3:// mirror of checkpoint_dir (spec.checkpointing.uri): rank 0 uploads every checkpoint,
    every rank pulls the newest one before resuming (checkpoint_remote.py)."""
    model_source: str | None = None
    """s3:// URI of the base model: each worker loads its pod's own whole copy of it (the
    driver's model_dir holds only the config and tokenizer)."""


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


ATTENTION_CHOICES = ("sdpa", "flex_attention")

FORWARD_TOKENS_CPU = 1024
"""CPU forwards of about 1k tokens hold a step's activations one piece at a time: SmolLM2-135M
LoRA on 8 packed rows of 512 ran as fast in four forwards of two rows as in one of eight, at
3014 MiB peak RSS instead of 7903-8251 MiB; 512-token forwards were slower (docs/benchmarks.md).
GPUs want the largest forward that fits."""


def gpu_options_from_env(environ) -> dict:
    """LoopConfig's GPU speed options from KUBETUNE_ATTENTION and KUBETUNE_COMPILE_BLOCKS.

    Off by default: both were measured on one H100 with Llama-shaped models
    (bench/trainer_mfu.py); turn them on per job through the pod environment.
    """
    attention = environ.get("KUBETUNE_ATTENTION", "sdpa")
    if attention not in ATTENTION_CHOICES:
        raise TrainerConfigError(f"KUBETUNE_ATTENTION={attention!r}: use one of {', '.join(ATTENTION_CHOICES)}")
    compile_flag = environ.get("KUBETUNE_COMPILE_BLOCKS", "0").strip().lower()
    if compile_flag not in ("0", "1", "true", "false", ""):
        raise TrainerConfigError(f"KUBETUNE_COMPILE_BLOCKS={compile_flag!r}: use 1 or 0")
    return {"attention": attention, "compile_blocks": compile_flag in ("1", "true")}


def forward_tokens_from_env(environ) -> int | None:
    """LoopConfig.forward_tokens from KUBETUNE_FORWARD_TOKENS: `auto` (default), 0 or a token count."""
    raw = environ.get("KUBETUNE_FORWARD_TOKENS", "auto")
    value = raw.strip()
    if value.lower() in ("", "auto"):
        return None
    if not (value.isascii() and value.isdigit()):
        raise TrainerConfigError(
            f"KUBETUNE_FORWARD_TOKENS={raw!r}: use auto, 0 (no limit) or the most tokens one forward may hold"
        )
    return int(value)


def resolve_forward_tokens(requested: int | None, device: str) -> int:
    """The budget a worker on `device` uses (0 = no limit)."""
    if requested is not None:
        return requested
    return FORWARD_TOKENS_CPU if device == "cpu" else 0


def forward_width(row) -> int:
    """Tokens a row adds per unit of padded width: a preference pair is two rows (chosen, rejected)."""
    if hasattr(row, "prompt_ids"):
        return 2 * (len(row.prompt_ids) + max(len(row.chosen_ids), len(row.rejected_ids)))
    return len(row.input_ids)


def forward_chunks(rows: list, budget: int, width=forward_width) -> list[list]:
    """Consecutive groups of `rows` whose padded size (rows x widest row) stays within `budget`.

    A row wider than the budget forms a group of its own (rows are never cut: that would change
    what attends to what). Budget 0 keeps the micro-batch whole.
    """
    if budget <= 0 or not rows:
        return [list(rows)] if rows else []
    chunks: list[list] = []
    current: list = []
    widest = 0
    for row in rows:
        w = width(row)
        if current and (len(current) + 1) * max(widest, w) > budget:
            chunks.append(current)
            current, widest = [], 0
        current.append(row)
        widest = max(widest, w)
    chunks.append(current)
    return chunks


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


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, *, seed: int, epoch: int) -> tuple[int, ...]:
    """The seeded order of an epoch (cached: every micro-batch of the epoch reads it)."""
    order = list(range(n))
    random.Random(f"order:{seed}:{epoch}").shuffle(order)
    return tuple(order)


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


def collate(rows: list, spec: FineTuneJobSpec, pad_id: int, *, build_mask: bool = True) -> tuple[dict, int]:
    """(batch tensors, non-padding tokens) for one micro-batch.

    `build_mask=False`: packed batches carry `segment_ids`; `to_device` builds the mask there.
    """
    from .data_collate import collate_preference, collate_sft

    if spec.objective.type == "sft":
        batch = collate_sft(rows, pad_id=pad_id, packing=spec.preprocessing.packing, build_mask=build_mask)
        return batch, sum(len(r.input_ids) for r in rows)
    batch = collate_preference(rows, pad_id=pad_id)
    tokens = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
    return batch, tokens


def to_device(batch: dict, device: str, *, mask: bool = True) -> dict:
    """Move a micro-batch to `device`, building a packed batch's 4D mask there from its segment ids
    (`mask=False`: no mask, the model infers the samples from position_ids)."""
    from .data_collate import block_causal_mask

    out = {key: v.to(device, non_blocking=True) for key, v in batch.items()}
    segments = out.pop("segment_ids", None)
    if segments is not None:
        out["attention_mask"] = block_causal_mask(segments) if mask else None
    return out


def batch_count(batch: dict, spec: FineTuneJobSpec) -> float:
    """What the loss of one forward's batch is summed over: loss tokens (SFT) or pairs (DPO/ORPO);
    the step divides by the total over all its forwards on all workers."""
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


class _WorkerRun:
    """One worker's training run: set up, resume, then one method per step concern."""

    def __init__(self, cfg: LoopConfig):
        import torch

        self.cfg, self.spec, self.hp = cfg, cfg.spec, cfg.spec.hyperparameters
        self.rank, self.world_size = world()
        self.device = device_for(cfg.use_gpu)
        self.seed = self.hp.seed

        seed_all(self.seed)
        gpu = self.device.startswith("cuda")
        # flex attention has no backward on CPU and compiling there costs minutes: GPU only
        self.attention = cfg.attention if gpu else "sdpa"
        self.compile_blocks = cfg.compile_blocks and gpu
        self.forward_tokens = resolve_forward_tokens(cfg.forward_tokens, "cuda" if gpu else "cpu")
        if self.rank == 0:
            log.info("forwards hold at most %s (KUBETUNE_FORWARD_TOKENS)",
                     f"{self.forward_tokens} tokens" if self.forward_tokens else "a whole micro-batch")
        if (self.attention, self.compile_blocks) != (cfg.attention, cfg.compile_blocks) and self.rank == 0:
            log.warning("attention=%s compile_blocks=%s apply on GPUs only; using sdpa without compile on %s",
                        cfg.attention, cfg.compile_blocks, self.device)
        model = model_init.load_model(self.spec, model_init.worker_model_dir(cfg.model_dir, cfg.model_source),
                                      device=self.device, attn_implementation=self.attention)
        seed_all(self.seed)  # adapter init is identical on every worker and in every (resumed) run
        self.model = methods.apply_method(model, self.spec)
        self.model.train()
        self.autocast_dtype = methods.adapter_autocast_dtype(self.spec, self.device)
        if self.autocast_dtype is not None:
            methods.keep_adapter_inputs_in_base_dtype(self.model)
            if self.rank == 0:
                log.info("adapters compute in %s under autocast (float32 master weights)", self.autocast_dtype)
        if self.compile_blocks:
            for block in methods_hft.find_blocks(self.model):
                block.compile()
        self.trainable_count, self.total_count = methods.parameter_counts(self.model)
        if self.rank == 0:
            log.info("method %s: %d of %d parameters trainable (%.2f%%)", self.spec.method.type,
                     self.trainable_count, self.total_count, 100.0 * self.trainable_count / max(1, self.total_count))
        self.lm_head = objectives.output_head(self.model)
        self.reference = None
        if self.spec.objective.type == "dpo":
            self.reference = objectives.Reference(self.model, adapter=methods.is_adapter_method(self.spec))

        self.sequences = build_sequences(_resolve(cfg.train), self.spec)
        if not self.sequences:
            raise TrainerConfigError("no training samples: check spec.datasets and preprocessing")
        self.plan = plan_steps(len(self.sequences), self.world_size, self.hp)
        if self.plan.sequences < self.plan.per_step and self.rank == 0:
            log.warning(
                "%d training sequences are fewer than one optimizer step takes (%d = workers x batchSize x "
                "gradientAccumulationSteps): sequences repeat within a step; lower batchSize or add data",
                self.plan.sequences, self.plan.per_step,
            )
        self.params_by_name = dict(self.model.named_parameters())
        self.names_by_id = {id(p): n for n, p in self.params_by_name.items()}
        self.hft = (self.spec.method.hft or HftConfig()) if self.spec.method.type == "hft" else None
        self.stage: int | None = None
        self.selections: dict[int, list] = {}
        self.optimizer = None
        self.forward_model = self.model
        self.trainable: list[torch.nn.Parameter] = []

    # -- resume and optimizer

    def resume(self) -> tuple[int, list[float], ckpt.CheckpointRef | None]:
        """Load the newest complete checkpoint, if any; returns (start step, losses so far, it)."""
        if self.cfg.checkpoint_remote:
            checkpoint_remote.pull_latest(self.cfg.checkpoint_remote, self.cfg.checkpoint_dir)
        latest = ckpt.latest_checkpoint(self.cfg.checkpoint_dir)
        saved_optimizer, start, losses = None, 0, []
        if latest is not None:
            meta = latest.meta()
            if meta.get("totalSteps") != self.plan.total_steps or meta.get("worldSize") != self.world_size:
                log.warning(
                    "checkpoint %s was written with totalSteps=%s worldSize=%s; this run has %s and %s: "
                    "resuming anyway (the schedule follows this run)",
                    latest.path, meta.get("totalSteps"), meta.get("worldSize"), self.plan.total_steps, self.world_size,
                )
            written_with = meta.get("forwardTokens", self.forward_tokens)
            if written_with != self.forward_tokens and self.rank == 0:
                log.warning(
                    "checkpoint %s was written with forwards of at most %s tokens, this run uses %s "
                    "(KUBETUNE_FORWARD_TOKENS; 0 = no limit): same steps, but dropout masks are drawn per "
                    "forward, so with dropout the losses will not repeat the interrupted run's exactly",
                    latest.path, written_with, self.forward_tokens,
                )
            load_trained_state(self.model, self.spec, latest)
            saved_optimizer = ckpt.load_optimizer(latest)
            start, losses = latest.step, list(meta.get("losses", []))[: latest.step]
            if self.rank == 0:
                log.info("resuming from %s at step %d of %d", latest.path, start, self.plan.total_steps)
        if self.hft is not None:
            self.stage = methods_hft.stage_of(start, self.plan.total_steps, self.hft.stages)
            self.selections[self.stage] = methods_hft.apply_stage(self.model, seed=self.hft.seed, stage=self.stage)
        self._rebuild(saved_optimizer)
        return start, losses, latest

    def _rebuild(self, saved_optimizer: dict | None) -> None:
        """A fresh optimizer (and DDP wrapper) over what trains now, restoring kept AdamW state."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.optimizer = build_optimizer(self.model, self.hp)
        if saved_optimizer is not None:
            ckpt.restore_optimizer_state(self.optimizer, saved_optimizer, self.params_by_name)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.world_size > 1:
            # DDP registers gradient hooks only for parameters that train now, so HFT re-wraps per stage.
            index = [self.device_index()] if self.device.startswith("cuda") else None
            self.forward_model = DDP(self.model, device_ids=index)

    def device_index(self) -> int | None:
        import torch

        return torch.device(self.device).index

    def maybe_next_hft_stage(self, step: int) -> None:
        if self.hft is None:
            return
        stage = methods_hft.stage_of(step, self.plan.total_steps, self.hft.stages)
        if stage == self.stage:
            return
        kept = ckpt.optimizer_state_by_name(self.optimizer, self.names_by_id)
        self.stage = stage
        self.selections[stage] = methods_hft.apply_stage(self.model, seed=self.hft.seed, stage=stage)
        self._rebuild(kept)

    # -- one optimizer step

    def forwards(self, step: int) -> list[tuple[dict, int]]:
        """This worker's forwards for `step`: each micro-batch, split to the forward token budget.

        Workers may run different numbers of forwards; gradients are all-reduced only in each
        worker's last backward (the others run under DDP's no_sync), so the collectives match."""
        out = []
        for k in range(self.hp.gradient_accumulation_steps):
            rows = [self.sequences[i] for i in micro_batch_indices(step, k, self.rank, self.plan, self.hp, self.seed)]
            for chunk in forward_chunks(rows, self.forward_tokens):
                batch, tokens = collate(chunk, self.spec, self.cfg.pad_id, build_mask=self.device == "cpu")
                out.append((to_device(batch, self.device, mask=self.attention != "flex_attention"), tokens))
        return out

    def autocast(self):
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def loss_parts(self, batch: dict) -> objectives.LossParts:
        if self.spec.objective.type == "sft":
            return objectives.sft(self.forward_model, batch, head=self.lm_head)
        return objectives.preference(
            self.spec.objective.type, self.forward_model, batch, beta=self.spec.objective.beta,
            pad_id=self.cfg.pad_id, reference=self.reference, unwrapped=self.model,
        )

    def step(self, step: int) -> tuple[float, float, int]:
        """Run optimizer step `step`; returns (global loss, learning rate, global non-padding tokens)."""
        import torch

        lr = lr_at(step, self.plan.total_steps, self.hp)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(self.seed * 1_000_003 + step * 1_009 + self.rank)
        random.seed(self.seed * 1_000_003 + step * 1_009 + self.rank)

        batches = self.forwards(step)
        (global_count,) = all_reduce_sum([sum(batch_count(b, self.spec) for b, _ in batches)])
        global_count = max(global_count, 1.0)
        loss_sum, tokens = 0.0, 0
        for k, (batch, n_tokens) in enumerate(batches):
            sync = contextlib.nullcontext()
            if self.forward_model is not self.model and k < len(batches) - 1:
                sync = self.forward_model.no_sync()
            with sync:
                with self.autocast():
                    parts = self.loss_parts(batch)
                # DDP averages gradients over workers; scaling by world size makes it a sum.
                (parts.total * (self.world_size / global_count)).backward()
            loss_sum += float(parts.total.detach())
            tokens += n_tokens
        if self.hp.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.hp.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        global_loss_sum, global_tokens = all_reduce_sum([loss_sum, float(tokens)])
        loss = global_loss_sum / global_count
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {step + 1}; lower hyperparameters.learningRate or check the data"
            )
        return loss, lr, int(global_tokens)

    def save(self, done: int, losses: list[float]) -> ckpt.CheckpointRef | None:
        """Rank 0 writes the checkpoint; every worker waits so none runs ahead of a save."""
        ref = None
        if self.rank == 0:
            persistent = methods.persistent_parameter_names(self.model, self.spec)
            ref = ckpt.save_checkpoint(
                self.cfg.checkpoint_dir, done,
                trainable={n: self.params_by_name[n] for n in sorted(persistent)},
                optimizer=ckpt.optimizer_state_by_name(self.optimizer, self.names_by_id),
                meta={
                    "totalSteps": self.plan.total_steps, "worldSize": self.world_size, "seed": self.seed,
                    "forwardTokens": self.forward_tokens,
                    "method": self.spec.method.type, "objective": self.spec.objective.type,
                    "dataPosition": {"epoch": (done - 1) // self.plan.steps_per_epoch,
                                     "stepInEpoch": done % self.plan.steps_per_epoch},
                    "hftStage": self.stage, "losses": losses,
                    "rng": "reseeded per step from (seed, step, rank)",
                },
                keep_last=self.spec.checkpointing.keep_last,
            )
            if self.cfg.checkpoint_remote:
                checkpoint_remote.publish(ref, self.cfg.checkpoint_remote, keep_last=self.spec.checkpointing.keep_last)
        barrier()
        return ref


def train_loop(cfg: LoopConfig) -> LoopResult:
    """Train on this worker; all workers run it together (torch.distributed already set up by Ray)."""
    run = _WorkerRun(cfg)
    start_step, losses, latest = run.resume()
    plan, sink = run.plan, cfg.sink
    meter = ThroughputMeter(start_step, plan.total_steps)
    last_ref = latest if latest is not None and latest.step >= plan.total_steps else None

    for step in range(start_step, plan.total_steps):
        run.maybe_next_hft_stage(step)
        loss, lr, tokens = run.step(step)
        losses.append(loss)
        meter.add_tokens(tokens)
        done = step + 1
        if run.rank == 0 and sink is not None:
            sink.on_progress(make_progress(
                step=done, total_steps=plan.total_steps, epoch=done / plan.steps_per_epoch, loss=loss,
                learning_rate=lr, tokens_per_second=meter.tokens_per_second(), eta_seconds=meter.eta_seconds(done),
            ))
        if done % cfg.spec.checkpointing.every_steps == 0 or done == plan.total_steps:
            last_ref = run.save(done, losses) or last_ref
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
        trainable_parameters=run.trainable_count,
        total_parameters=run.total_count,
        hft_selections=run.selections,
    )
