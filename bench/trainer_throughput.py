"""LoRA SFT throughput: kubetune's training loop against transformers Trainer and TRL SFTTrainer.

    .venv/bin/python bench/trainer_throughput.py [--model DIR] [--steps 8] [--threads 2]

Three runs on the same model, the same tokenised samples (kubetune's data preparation: chat
template, loss on answers only), the same LoRA settings (rank 16, all linear layers), batch
size, optimizer steps, learning rate and threads, each in its own subprocess so peak RSS is
honest:

- ours:  `kubetune.trainer.loop.train_loop` (world size 1), packing without cross-attention,
         LM head and cross-entropy only where a label counts, forwards of at most 1024 tokens
         on CPU (`--ours-forward-tokens 0`: the whole micro-batch in one forward);
         `--ours-batch-size` sets its packed rows per step (match the plain run's tokens per
         step to compare memory)
- plain: transformers `Trainer` + peft, dynamic padding, no packing
- trl:   TRL `SFTTrainer` with `packing=True` (best-fit decreasing, padding-free)

Ours runs on the allocator `kubetune train --local` gives its workers (tcmalloc when installed,
see trainer_image/allocator.py); the baselines on glibc's unless `--baseline-allocator tcmalloc`.
Each line names its allocator. Useful tokens are non-padding tokens. The first optimizer step
(allocator and kernel warm-up) is excluded from the timing. Both wall-clock tokens/s and tokens per CPU-second are printed:
the second is robust when other processes share the CPU. Without --model the SmolLM2 folder
from `kubetune models import-gguf` is used when found, else a tiny random model (said so).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_CANDIDATES = [
    Path(os.environ.get("KUBETUNE_MODEL_CACHE", "/models")) / "HuggingFaceTB" / "SmolLM2-135M-Instruct",
    REPO / "out" / "models" / "SmolLM2-135M-Instruct",
    REPO / "out" / "quickstart" / "models" / "SmolLM2-135M-Instruct",
]
RUNNERS = ("ours", "plain", "trl")

# ----------------------------------------------------------------------------- data (ours, deterministic)

_PRODUCTS = ["lamp", "kettle", "backpack", "keyboard", "monitor", "tent", "bicycle", "camera", "desk", "blender"]
_TRAITS = [
    "is made of recycled aluminium", "ships within two working days", "comes with a two-year warranty",
    "weighs less than a kilogram", "is available in four colours", "can be returned within thirty days",
    "uses a standard USB-C charger", "was redesigned this spring", "needs no tools to assemble",
    "is rated for outdoor use", "has a replaceable battery", "is sold in bundles of two",
]


def make_rows(n: int, seed: int) -> list[dict]:
    """Alpaca rows with a long-tailed answer length, as real instruction data has."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        product = rng.choice(_PRODUCTS)
        sentences = max(1, min(24, int(rng.expovariate(1 / 5)) + 1))
        answer = " ".join(f"The {product} {rng.choice(_TRAITS)}." for _ in range(sentences))
        rows.append({
            "instruction": f"Tell me about the {product} (catalogue item {i}).",
            "input": "",
            "output": f"Item {i}: {answer}",
        })
    return rows


def job_spec(data_file: Path, model_dir: Path, args):
    from kubetune.api import parse_finetunejob

    return parse_finetunejob({
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench"},
        "spec": {
            "baseModel": {"uri": str(model_dir)},
            "datasets": [{"name": "catalogue", "uri": str(data_file), "format": "alpaca"}],
            "preprocessing": {"validationSplit": 0.0, "maxSeqLength": args.max_seq_length, "packing": True,
                              "piiRedaction": False, "dedup": "none"},
            "method": {"type": "lora", "lora": {"rank": 16, "alpha": 32, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": args.steps, "batchSize": args.batch_size, "learningRate": 2e-4,
                                "warmupRatio": 0.0, "scheduler": "constant", "maxGradNorm": 1.0, "seed": 7,
                                "gradientCheckpointing": bool(getattr(args, "gradient_checkpointing", False))},
            "checkpointing": {"everySteps": 1000000},
            "output": {"uri": str(data_file.parent / "out")},
        },
    }).spec


def prepared_samples(spec, model_dir: Path):
    from transformers import AutoTokenizer

    from kubetune.trainer.data_prepare import prepare

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prepared = prepare(spec, tokenizer, log=lambda _: None)
    return tokenizer, prepared.train


# ----------------------------------------------------------------------------- measuring


class StepClock:
    """Time and useful tokens at the end of every optimizer step."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []

    def mark(self, tokens_so_far: int, loss: float | None) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.tokens.append(tokens_so_far)
        if loss is not None:
            self.losses.append(float(loss))

    def result(self) -> dict:
        if len(self.times) < 2:
            raise RuntimeError("need at least 2 optimizer steps to time (the first is warm-up)")
        tokens = self.tokens[-1] - self.tokens[0]
        wall = self.times[-1] - self.times[0]
        cpu = self.cpu[-1] - self.cpu[0]
        tail = self.losses[-3:]
        return {
            "steps": len(self.times),
            "timedTokens": tokens,
            "tokensPerStep": tokens / (len(self.times) - 1),
            "wallSeconds": wall,
            "tokensPerSecond": tokens / wall,
            "tokensPerCpuSecond": tokens / cpu if cpu > 0 else None,
            "losses": self.losses,
            "finalLoss": sum(tail) / len(tail) if tail else None,
        }


def _count_hook(counter: list[int]):
    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            counter[0] += int(mask.sum())
        else:  # padding-free: one flattened row of real tokens
            counter[0] += int(ids.numel())
    return hook


def child_allocator_env(runner: str, baseline_allocator: str) -> dict[str, str]:
    """The malloc preload of one run: ours gets what local training workers get, the baselines
    glibc (what a user of them runs on) unless --baseline-allocator tcmalloc."""
    from kubetune.trainer.allocator import worker_allocator_env

    if runner == "ours":
        return worker_allocator_env(os.environ)
    return worker_allocator_env({"KUBETUNE_ALLOCATOR": baseline_allocator})


def run_ours(spec, model_dir: Path, samples, tokenizer, work: Path) -> dict:
    from kubetune.trainer import loop

    plan_rows = loop.build_sequences(samples, spec)
    plan = loop.plan_steps(len(plan_rows), 1, spec.hyperparameters)
    per_step = []
    for step in range(plan.total_steps):
        rows = [plan_rows[i] for k in range(spec.hyperparameters.gradient_accumulation_steps)
                for i in loop.micro_batch_indices(step, k, 0, plan, spec.hyperparameters, spec.hyperparameters.seed)]
        per_step.append(sum(len(r.input_ids) for r in rows))
    clock = StepClock()

    class Sink:
        def on_progress(self, progress):
            step = progress["step"]
            clock.mark(sum(per_step[:step]), progress["loss"])

        def on_phase(self, phase, message=""):
            pass

        def on_result(self, status):
            pass

        def close(self):
            pass

    loop.train_loop(loop.LoopConfig(spec=spec, model_dir=str(model_dir), train=samples,
                                    checkpoint_dir=str(work / "ckpt"), pad_id=tokenizer.pad_token_id, sink=Sink(),
                                    forward_tokens=loop.forward_tokens_from_env(os.environ)))
    return clock.result()


def _hf_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def _callback(clock: StepClock, counter: list[int]):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.mark(counter[0], None)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock.losses.append(float(logs["loss"]))

    return Clock()


def _common_args(spec, work: Path) -> dict:
    hp = spec.hyperparameters
    return dict(
        output_dir=str(work / "hf"), per_device_train_batch_size=hp.batch_size, max_steps=hp.max_steps,
        learning_rate=hp.learning_rate, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=hp.max_grad_norm,
        weight_decay=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=hp.seed,
        dataloader_num_workers=0, disable_tqdm=True,
    )


def run_plain(spec, model_dir: Path, samples, tokenizer, work: Path) -> dict:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    data = Dataset.from_dict({"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]})
    model = get_peft_model(_hf_model(model_dir), _lora_config())
    counter, clock = [0], StepClock()
    model.get_base_model().register_forward_pre_hook(_count_hook(counter), with_kwargs=True)
    trainer = Trainer(
        model=model, args=TrainingArguments(**_common_args(spec, work), remove_unused_columns=False),
        train_dataset=data, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[_callback(clock, counter)],
    )
    trainer.train()
    return clock.result()


def run_trl(spec, model_dir: Path, samples, tokenizer, work: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]})
    model = _hf_model(model_dir)
    counter, clock = [0], StepClock()
    model.register_forward_pre_hook(_count_hook(counter), with_kwargs=True)
    config = SFTConfig(**_common_args(spec, work), packing=True, max_length=spec.preprocessing.max_seq_length)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=_lora_config(), callbacks=[_callback(clock, counter)])
    trainer.train()
    return clock.result()


def child(args) -> int:
    """One runner in this process; writes its figures as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.child == "ours" and args.ours_batch_size:
        args.batch_size = args.ours_batch_size
    spec = job_spec(work / "train.jsonl", Path(args.model), args)
    tokenizer, samples = prepared_samples(spec, Path(args.model))
    runner = {"ours": run_ours, "plain": run_plain, "trl": run_trl}[args.child]
    result = runner(spec, Path(args.model), samples, tokenizer, work / args.child)
    result["peakRssMiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["samples"] = len(samples)
    Path(args.result).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- orchestration


def pick_model(explicit: str | None, work: Path) -> tuple[Path, str]:
    if explicit:
        return Path(explicit), Path(explicit).name
    for candidate in SMOLLM2_CANDIDATES:
        if (candidate / "config.json").is_file():
            return candidate, "SmolLM2-135M-Instruct"
    sys.path.insert(0, str(REPO))
    from tests.fixtures.tiny_model import build_tiny_model

    print("SmolLM2 folder not found (run `kubetune models import-gguf --output DIR` and pass --model DIR): "
          "using a tiny random model, whose figures say little about real models", flush=True)
    return build_tiny_model(work / "tiny-model"), "tiny random Llama (hidden 64, 2 layers)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model folder (default: imported SmolLM2, else a tiny model)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (first one untimed)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=600, help="training rows generated")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="ours with hyperparameters.gradientCheckpointing (TRL's SFTConfig has it on by default)")
    parser.add_argument("--ours-batch-size", type=int,
                        help="packed rows per step for ours (default --batch-size); pick it so that ours' tokens "
                             "per step match the plain run's when comparing memory")
    parser.add_argument("--ours-forward-tokens", default="auto",
                        help="most tokens in one of ours' forwards (KUBETUNE_FORWARD_TOKENS: auto = 1024 on CPU, "
                             "0 = the whole micro-batch at once)")
    parser.add_argument("--only", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    parser.add_argument("--baseline-allocator", choices=("system", "tcmalloc"), default="system",
                        help="malloc of the plain and trl runs (ours uses what `kubetune train --local` gives its "
                             "workers: tcmalloc when installed, KUBETUNE_ALLOCATOR=system for glibc)")
    parser.add_argument("--json", help="also write all figures to this file")
    parser.add_argument("--child", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for var, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads),
                       # idle OpenMP threads sleep instead of spinning: on a shared machine spinning
                       # inflates every run's CPU seconds by however busy the neighbours are
                       "OMP_WAIT_POLICY": "PASSIVE"}.items():
        os.environ.setdefault(var, value)
    if args.child:
        return child(args)
    from kubetune.trainer import loop
    from kubetune.trainer.errors import TrainerConfigError

    try:
        requested = loop.forward_tokens_from_env({"KUBETUNE_FORWARD_TOKENS": args.ours_forward_tokens})
    except TrainerConfigError as exc:
        parser.error(f"--ours-forward-tokens: {exc}")
    budget = f"auto ({loop.FORWARD_TOKENS_CPU} on CPU)" if requested is None else requested

    with tempfile.TemporaryDirectory(prefix="kt-bench-") as tmp:
        work = Path(tmp)
        model_dir, model_name = pick_model(args.model, work)
        with open(work / "train.jsonl", "w") as f:
            for row in make_rows(args.rows, seed=7):
                f.write(json.dumps(row) + "\n")
        print(f"model: {model_name} ({model_dir}); {args.steps} steps of batch {args.batch_size}, "
              f"maxSeqLength {args.max_seq_length}, {args.threads} threads, LoRA r16 all-linear; ours' forwards hold "
              f"at most {budget} tokens (KUBETUNE_FORWARD_TOKENS)", flush=True)
        results = {}
        for name in args.only:
            out = work / f"{name}.json"
            cmd = [sys.executable, __file__, "--child", name, "--work", str(work), "--result", str(out),
                   "--model", str(model_dir), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                   "--max-seq-length", str(args.max_seq_length), "--threads", str(args.threads)]
            if args.ours_batch_size:
                cmd += ["--ours-batch-size", str(args.ours_batch_size)]
            if args.gradient_checkpointing:
                cmd += ["--gradient-checkpointing"]
            env = {**os.environ, **child_allocator_env(name, args.baseline_allocator),
                   "KUBETUNE_FORWARD_TOKENS": args.ours_forward_tokens}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{name}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            results[name] = json.loads(out.read_text())
            r = results[name]
            print(f"{name:6s} {r['tokensPerSecond']:9.1f} tok/s  {r['tokensPerCpuSecond'] or 0:9.1f} tok/cpu-s  "
                  f"peak RSS {r['peakRssMiB']:7.0f} MiB  {r['tokensPerStep']:6.0f} tok/step  final loss {r['finalLoss']:.4f}  "
                  f"({r['timedTokens']} tokens in {r['wallSeconds']:.1f}s; run {time.perf_counter() - t0:.0f}s; "
                  f"malloc: {'tcmalloc' if 'tcmalloc' in env.get('LD_PRELOAD', '') else 'glibc'})",
                  flush=True)
        if "ours" in results:
            ours = results["ours"]
            for base in ("plain", "trl"):
                if base in results:
                    b = results[base]
                    print(f"ours / {base}: {ours['tokensPerSecond'] / b['tokensPerSecond']:.2f}x tokens/s, "
                          f"{(ours['tokensPerCpuSecond'] or 0) / (b['tokensPerCpuSecond'] or 1):.2f}x tokens/cpu-s, "
                          f"{ours['peakRssMiB'] / b['peakRssMiB']:.2f}x peak RSS, "
                          f"final loss {ours['finalLoss']:.4f} vs {b['finalLoss']:.4f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"model": model_name, "args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
