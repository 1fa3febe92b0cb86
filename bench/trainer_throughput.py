"""LoRA SFT throughput: kubetune's training loop against transformers Trainer and TRL SFTTrainer.

    .venv/bin/python bench/trainer_throughput.py [--model DIR | --tiny] [--steps 8] [--threads 2] [--quick]

Runs on the same model, the same tokenised samples (kubetune's data preparation: chat template,
loss on answers only), the same LoRA settings (rank 16, alpha 32, no dropout, all linear
layers), batch size, optimizer steps, constant learning rate, gradient clipping, threads and
malloc, each in its own subprocess so peak RSS is honest. Precision is fp32 weights with no
autocast and gradient checkpointing is off for every run (on for every run with
`--gradient-checkpointing`):

- ours:          `kubetune.trainer.loop.train_loop` (world size 1), packing without
                 cross-attention, LM head and cross-entropy only where a label counts, forwards of
                 at most 1024 tokens on CPU (`--ours-forward-tokens 0`: the whole micro-batch)
- plain:         transformers `Trainer` + peft, dynamic padding (it has no packing)
- trl:           TRL `SFTTrainer`, `packing=True` (best-fit decreasing, padding-free), bf16 and
                 gradient checkpointing off like ours
- trl-defaults:  TRL `SFTTrainer` with SFTConfig's own defaults for precision, checkpointing and
                 packing (bf16 autocast, gradient checkpointing, no packing): what a user gets
                 without tuning it; a second, labelled row, not the comparison

Each run prints its effective settings (dtype, autocast, checkpointing, packing, threads,
malloc). Every run gets the malloc `kubetune train --local` gives its workers (tcmalloc when
installed, trainer_image/allocator.py) unless `--baseline-allocator system` puts the baselines
on glibc's. Useful tokens are non-padding tokens; the first optimizer step (warm-up) is not
timed. Wall-clock tokens/s and tokens per CPU-second are both printed (the second is robust when
other processes share the CPU), and beside them the achieved model FLOP/s (bench/flop_count.py:
4N + 6N_lora + attention per token on a frozen base) as a share of this machine's fp32 matmul
peak, measured by a torch matmul in the same run.

Without --model the SmolLM2-135M folder the quickstart imports (out/quickstart/base-model, or
`kubetune models import-gguf --output DIR`) is used; when there is none the bench stops with
exit 2, unless `--tiny` asks for a tiny random model (whose figures say little about real
models). Writes out/bench/trainer_throughput.json (`--json` to change) with per-step figures.
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
sys.path.append(str(REPO))  # for bench.* and tests.*; appended, so the repo's `operator` folder never shadows the stdlib's
SMOLLM2_CANDIDATES = [
    REPO / "out" / "quickstart" / "base-model",
    Path(os.environ.get("KUBETUNE_MODEL_CACHE", "/models")) / "HuggingFaceTB" / "SmolLM2-135M-Instruct",
    REPO / "out" / "models" / "SmolLM2-135M-Instruct",
]
RUNNERS = ("ours", "plain", "trl", "trl-defaults")
BASELINES = RUNNERS[1:]
QUICK = {"steps": 4, "batch_size": 4, "max_seq_length": 256, "rows": 200}
"""`--quick` (make bench): about 5 minutes for all four runs of SmolLM2 on 2 cores."""

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
            # per timed step, for plots: tokens/s of each optimizer step after the first
            "stepTokensPerSecond": [(b - a) / (tb - ta) for a, b, ta, tb in
                                    zip(self.tokens, self.tokens[1:], self.times, self.times[1:]) if tb > ta],
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
    """The malloc preload of one run: what local training workers get for ours and, with
    --baseline-allocator same, for the baselines; else glibc's (system) or tcmalloc."""
    from kubetune.trainer.allocator import worker_allocator_env

    if runner == "ours" or baseline_allocator == "same":
        return worker_allocator_env(os.environ)
    return worker_allocator_env({"KUBETUNE_ALLOCATOR": baseline_allocator})


def allocator_name() -> str:
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"


def effective_settings(model, *, autocast: str, checkpointing: bool, packing: str, batch_size: int) -> dict:
    """What a run really did, read back from the objects that ran it."""
    import torch

    trained = next((p for p in model.parameters() if p.requires_grad), None)
    frozen = next((p for p in model.parameters() if not p.requires_grad), trained)
    return {"weights": str(frozen.dtype).replace("torch.", ""), "adapterWeights": str(trained.dtype).replace("torch.", ""),
            "autocast": autocast, "gradientCheckpointing": bool(checkpointing), "packing": packing,
            "batchSize": batch_size, "threads": torch.get_num_threads(), "malloc": allocator_name()}


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

    seen: dict = {}
    from kubetune.trainer import methods

    original = methods.apply_method

    def spy(model, *a, **k):  # the model the loop trains, to read its settings back
        seen["model"] = original(model, *a, **k)
        return seen["model"]

    methods.apply_method = spy
    try:
        loop.train_loop(loop.LoopConfig(spec=spec, model_dir=str(model_dir), train=samples,
                                        checkpoint_dir=str(work / "ckpt"), pad_id=tokenizer.pad_token_id, sink=Sink(),
                                        forward_tokens=loop.forward_tokens_from_env(os.environ)))
    finally:
        methods.apply_method = original
    result = clock.result()
    hp = spec.hyperparameters
    result["settings"] = effective_settings(
        seen["model"], autocast="none" if not getattr(hp, "bf16", False) else "bf16",
        checkpointing=hp.gradient_checkpointing, packing="kubetune packed rows (no cross-attention)",
        batch_size=hp.batch_size)
    return result


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


def _schedule_args(spec, work: Path) -> dict:
    """What makes two runs the same training: batch, steps, learning rate, clipping, seed."""
    hp = spec.hyperparameters
    return dict(
        output_dir=str(work / "hf"), per_device_train_batch_size=hp.batch_size, max_steps=hp.max_steps,
        learning_rate=hp.learning_rate, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=hp.max_grad_norm,
        weight_decay=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=hp.seed,
        dataloader_num_workers=0, disable_tqdm=True,
    )


def _common_args(spec, work: Path) -> dict:
    """The schedule plus ours' precision and checkpointing: fp32, no autocast."""
    return dict(_schedule_args(spec, work), bf16=False, fp16=False,
                gradient_checkpointing=bool(spec.hyperparameters.gradient_checkpointing))


def _hf_settings(trainer, packing: str) -> dict:
    args = trainer.args
    autocast = "bf16" if args.bf16 else "fp16" if args.fp16 else "none"
    return effective_settings(trainer.model, autocast=autocast, checkpointing=args.gradient_checkpointing,
                              packing=packing, batch_size=args.per_device_train_batch_size)


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
    return {**clock.result(), "settings": _hf_settings(trainer, "none (dynamic padding)")}


def run_trl(spec, model_dir: Path, samples, tokenizer, work: Path, *, defaults: bool = False) -> dict:
    """TRL at ours' settings; `defaults`: at SFTConfig's own precision, checkpointing and packing."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]})
    model = _hf_model(model_dir)
    counter, clock = [0], StepClock()
    model.register_forward_pre_hook(_count_hook(counter), with_kwargs=True)
    if defaults:
        config = SFTConfig(**_schedule_args(spec, work), max_length=spec.preprocessing.max_seq_length)
    else:
        config = SFTConfig(**_common_args(spec, work), packing=True, max_length=spec.preprocessing.max_seq_length)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=_lora_config(), callbacks=[_callback(clock, counter)])
    trainer.train()
    packing = f"TRL {config.packing_strategy} (padding-free)" if config.packing else "none (padding)"
    return {**clock.result(), "settings": _hf_settings(trainer, packing)}


def child(args) -> int:
    """One runner in this process; writes its figures as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.child == "ours" and args.ours_batch_size:
        args.batch_size = args.ours_batch_size
    spec = job_spec(work / "train.jsonl", Path(args.model), args)
    tokenizer, samples = prepared_samples(spec, Path(args.model))
    runner = {"ours": run_ours, "plain": run_plain, "trl": run_trl,
              "trl-defaults": lambda *a: run_trl(*a, defaults=True)}[args.child]
    result = runner(spec, Path(args.model), samples, tokenizer, work / args.child)
    result["peakRssMiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["samples"] = len(samples)
    from bench.flop_count import mean_context

    result["meanContext"] = mean_context([len(x.input_ids) for x in samples])
    Path(args.result).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- orchestration


class NoModel(RuntimeError):
    """Neither --model nor the quickstart's SmolLM2 folder, and no --tiny."""


def pick_model(explicit: str | None, work: Path, tiny: bool) -> tuple[Path, str]:
    if explicit:
        if not (Path(explicit) / "config.json").is_file():
            raise NoModel(f"--model {explicit}: not a Hugging Face model folder (no config.json)")
        return Path(explicit), Path(explicit).name
    if tiny:
        from tests.fixtures.tiny_model import build_tiny_model

        print("--tiny: a tiny random model, whose figures say little about real models", flush=True)
        return build_tiny_model(work / "tiny-model"), "tiny random Llama (hidden 64, 2 layers)"
    for candidate in SMOLLM2_CANDIDATES:
        if (candidate / "config.json").is_file():
            return candidate, "SmolLM2-135M-Instruct"
    raise NoModel("no model to measure: none of " + ", ".join(str(c) for c in SMOLLM2_CANDIDATES)
                  + " has a config.json. Import SmolLM2 with `.venv/bin/kubetune models import-gguf --output "
                  "out/quickstart/base-model` (or run `make demo`), pass --model DIR, or ask for --tiny")


def model_flops(model_dir: Path, mean_ctx: float) -> float:
    """Model FLOPs per trained token for LoRA r16 on every linear layer of a frozen base."""
    from transformers import AutoConfig

    from bench.flop_count import base_parameters, flops_per_token, lora_parameters, shape_of

    shape = shape_of(AutoConfig.from_pretrained(model_dir))
    return flops_per_token(base_params=base_parameters(shape), lora_params=lora_parameters(shape, 16),
                           layers=shape["num_hidden_layers"], hidden=shape["hidden_size"], context=mean_ctx,
                           frozen_base=True)


def settings_text(s: dict) -> str:
    return (f"weights {s['weights']} (adapter {s['adapterWeights']}), autocast {s['autocast']}, "
            f"checkpointing {'on' if s['gradientCheckpointing'] else 'off'}, packing: {s['packing']}, "
            f"batch {s['batchSize']}, {s['threads']} threads, malloc {s['malloc']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model folder (default: the quickstart's SmolLM2 import)")
    parser.add_argument("--tiny", action="store_true", help="without --model and SmolLM2: a tiny random model")
    parser.add_argument("--quick", action="store_true",
                        help="make bench sizes: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (first one untimed)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=600, help="training rows generated")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="gradient checkpointing on in ours, plain and trl (trl-defaults has it on anyway)")
    parser.add_argument("--ours-batch-size", type=int,
                        help="packed rows per step for ours (default --batch-size); pick it so that ours' tokens "
                             "per step match the plain run's when comparing memory")
    parser.add_argument("--ours-forward-tokens", default="auto",
                        help="most tokens in one of ours' forwards (KUBETUNE_FORWARD_TOKENS: auto = 1024 on CPU, "
                             "0 = the whole micro-batch at once)")
    parser.add_argument("--only", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    parser.add_argument("--baseline-allocator", choices=("same", "system", "tcmalloc"), default="same",
                        help="malloc of the baselines: the same as ours (default; what `kubetune train --local` "
                             "gives its workers), glibc's, or tcmalloc")
    parser.add_argument("--json", default="out/bench/trainer_throughput.json", help="where to write all figures")
    parser.add_argument("--child", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
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

    from bench import results as bench_results
    from bench.flop_count import matmul_peak_flops

    with tempfile.TemporaryDirectory(prefix="kt-bench-") as tmp:
        work = Path(tmp)
        try:
            model_dir, model_name = pick_model(args.model, work, args.tiny)
        except NoModel as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        with open(work / "train.jsonl", "w") as f:
            for row in make_rows(args.rows, seed=7):
                f.write(json.dumps(row) + "\n")
        about = bench_results.machine()
        peak = matmul_peak_flops(args.threads)
        print(f"model: {model_name} ({model_dir}); {args.steps} steps of batch {args.batch_size}, "
              f"maxSeqLength {args.max_seq_length}, {args.threads} threads, LoRA r16 all-linear; ours' forwards hold "
              f"at most {budget} tokens (KUBETUNE_FORWARD_TOKENS)", flush=True)
        print(f"machine: {about['cpu']}, {about['cores']} cores, load average {about['loadAverageBefore']}; "
              f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s ({args.threads} threads, measured now); "
              f"commit {about['commit']}", flush=True)
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
            r = results[name] = json.loads(out.read_text())
            r["flopsPerToken"] = model_flops(model_dir, r["meanContext"])
            r["achievedFlops"] = r["tokensPerSecond"] * r["flopsPerToken"]
            r["shareOfMatmulPeak"] = r["achievedFlops"] / peak
            print(f"{name:12s} {r['tokensPerSecond']:8.1f} tok/s  {r['tokensPerCpuSecond'] or 0:8.1f} tok/cpu-s  "
                  f"peak RSS {r['peakRssMiB']:6.0f} MiB  {r['tokensPerStep']:6.0f} tok/step  "
                  f"final loss {r['finalLoss']:.4f}  {r['achievedFlops'] / 1e9:6.2f} GFLOP/s = "
                  f"{100 * r['shareOfMatmulPeak']:.1f}% of peak  ({r['timedTokens']} tokens in "
                  f"{r['wallSeconds']:.1f}s; run {time.perf_counter() - t0:.0f}s)", flush=True)
            print(f"{'':12s} {settings_text(r['settings'])}", flush=True)
        ratios = {}
        if "ours" in results:
            ours = results["ours"]
            for base in BASELINES:
                if base in results:
                    b = results[base]
                    ratios[base] = {"tokensPerSecond": ours["tokensPerSecond"] / b["tokensPerSecond"],
                                    "tokensPerCpuSecond": (ours["tokensPerCpuSecond"] or 0) / (b["tokensPerCpuSecond"] or 1),
                                    "peakRss": ours["peakRssMiB"] / b["peakRssMiB"]}
                    label = " (TRL's own defaults, not equal settings)" if base == "trl-defaults" else ""
                    print(f"ours / {base}{label}: {ratios[base]['tokensPerSecond']:.2f}x tokens/s, "
                          f"{ratios[base]['tokensPerCpuSecond']:.2f}x tokens/cpu-s, "
                          f"{ratios[base]['peakRss']:.2f}x peak RSS, "
                          f"final loss {ours['finalLoss']:.4f} vs {b['finalLoss']:.4f}")
        bench_results.write(args.json, "trainer_throughput", about, {
            "model": model_name, "matmulPeakFlops": peak,
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "work", "result")},
            "results": results, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
