"""GPU tokens/s and MFU of kubetune's training loop on a 1B-class Llama-shaped model.

    python bench/trainer_mfu.py                       # LoRA r16, all linear layers, packed 8 x 2048, bf16
    python bench/trainer_mfu.py --method qlora        # same on a 4-bit (NF4) base through bitsandbytes
    python bench/trainer_mfu.py --method full         # full fine-tuning, for comparison
    python bench/trainer_mfu.py --smoke               # 2 steps of a tiny model on CPU (checks the script)

The model is built from a config with random weights (nothing is downloaded), saved to a
temporary folder and trained by `kubetune.trainer.loop.train_loop` exactly as a FineTuneJob
would be: `model_init.load_model` (bf16, bitsandbytes for qlora), `methods.apply_method`
(peft LoRA; float32 adapter weights computing in bf16 under autocast), packing with
`data_collate.pack` (samples never attend to each other), `objectives.sft`, AdamW over the
trainable parameters, gradient clipping. By default every transformer block is compiled
(`LoopConfig.compile_blocks`) and attention is transformers' flex_attention
(`LoopConfig.attention`), which skips the tiles the packed block-diagonal mask hides;
`--no-compile --attention sdpa` measures the plain path. The data is random
tokens in samples of random length (log-normal, mean about a quarter of the row) packed into
rows of --seq-len; every token but the first of a sample carries loss.

What is counted (printed with the result): model FLOPs per token as bench/flop_count.py
defines them, k * N + 6 * N_lora + 12 * L * d * s (k = 4 on a frozen base, 6 for full
fine-tuning), and

    MFU = tokens/s * FLOPs/token / peak FLOP/s   (--peak-tflops, default H100 SXM bf16 dense 989)

Two MFU figures are printed: with s = --seq-len (the packed row, as if it were one sequence:
the usual MFU convention) and with s = the mean context of a token in its own
sample (sum of squared sample lengths / tokens: the attention work that is useful; lower).
QLoRA's dequantisation is not counted as model FLOPs. Steps are synchronised with
torch.cuda.synchronize(); the first --warmup steps are not timed.

Needs torch, transformers, peft, pydantic and pyyaml (plus bitsandbytes for qlora); no Ray, no
`datasets`, no network. Runs from a source checkout without installing kubetune.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {
    "kubetune": "kubetune", "kubetune.api": "crds", "kubetune.trainer": "trainer_image",
}
"""The part of pyproject's [tool.setuptools.package-dir] this script needs (source checkout)."""

H100_SXM_BF16_DENSE_TFLOPS = 989.0

sys.path.append(str(REPO))  # appended: the repo's `operator` folder must not shadow the stdlib's
from bench.flop_count import base_parameters, flops_per_token  # noqa: E402  (the bench's FLOPs, shared)


def ensure_kubetune_importable() -> None:
    """Map the package folders as pyproject does, when kubetune is not pip-installed."""
    if importlib.util.find_spec("kubetune") is not None:
        return
    for name, folder in PACKAGE_DIRS.items():
        init = REPO / folder / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, module)


# ---------------------------------------------------------------- shapes and FLOPs (pure)


def model_shape(args) -> dict:
    if args.smoke:
        return dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=128, vocab_size=512)
    return dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                num_key_value_heads=args.kv_heads, intermediate_size=args.intermediate, vocab_size=args.vocab)


def sample_lengths(total_tokens: int, row: int, seed: int) -> list[int]:
    """Random sample lengths (log-normal around row/4, clipped to [16, row]) summing to >= total_tokens."""
    rng = random.Random(seed)
    mu = math.log(max(16, row / 4))
    out, acc = [], 0
    while acc < total_tokens:
        n = int(min(row, max(16, rng.lognormvariate(mu, 0.6))))
        out.append(n)
        acc += n
    return out


# ---------------------------------------------------------------- the run


def build_model_dir(args, shape: dict, dest: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, max_position_embeddings=max(4096, args.seq_len), rope_theta=500000.0,
                         tie_word_embeddings=False, torch_dtype="bfloat16" if not args.smoke else "float32")
    device = "cuda" if not args.smoke else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16 if not args.smoke else torch.float32)
    model.save_pretrained(dest)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def job_spec(args, model_dir: Path, work: Path):
    from kubetune.api import parse_finetunejob

    method: dict = {"type": args.method}
    base: dict = {"uri": str(model_dir), "dtype": "float32" if args.smoke else "bfloat16"}
    if args.method in ("lora", "qlora"):
        method["lora"] = {"rank": args.rank, "alpha": 2 * args.rank, "dropout": 0.0}
    if args.method == "qlora":
        base["quantization"] = {"bits": 4, "quantType": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"}
    return parse_finetunejob({
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "mfu"},
        "spec": {
            "baseModel": base,
            "datasets": [{"name": "random", "uri": str(work / "unused.jsonl"), "format": "text"}],
            "preprocessing": {"maxSeqLength": args.seq_len, "packing": True, "trainOnPrompt": True},
            "method": method,
            "hyperparameters": {"maxSteps": args.warmup + args.steps, "batchSize": args.batch_size,
                                "learningRate": 1e-4, "warmupRatio": 0.0, "scheduler": "constant",
                                "maxGradNorm": 1.0, "seed": 1,
                                "gradientCheckpointing": bool(args.gradient_checkpointing)},
            "checkpointing": {"everySteps": 1_000_000, "keepLast": 1},
            "output": {"uri": str(work / "out")},
        },
    }).spec


class StepTimer:
    """A progress sink that synchronises the GPU and stamps the end of every optimizer step."""

    def __init__(self, cuda: bool, *, profile_step: int | None = None, profile_file: str | None = None):
        self.cuda = cuda
        self.stamps: list[float] = []
        self.losses: list[float] = []
        self.profile_step, self.profile_file, self.profiler = profile_step, profile_file, None

    def on_progress(self, progress: dict) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        self.losses.append(float(progress["loss"]))
        print(f"  step {progress['step']}: loss {progress['loss']:.4f}", flush=True)
        if self.profile_file and progress["step"] == self.profile_step:
            self._start_profile()
        elif self.profiler is not None:
            self._stop_profile()
            self.stamps[-1] = time.perf_counter()  # the profiler's teardown is not the next step's time

    def _start_profile(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(activities=activities)
        self.profiler.__enter__()

    def _stop_profile(self) -> None:
        self.profiler.__exit__(None, None, None)
        key = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=key, row_limit=40)
        Path(self.profile_file).write_text(table)
        print("\n".join(table.splitlines()[:22]), flush=True)
        self.profiler = None

    def on_phase(self, phase: str, message: str = "") -> None:
        pass

    def on_result(self, status: dict) -> None:
        pass

    def close(self) -> None:
        pass


def run(args) -> dict:
    import torch

    ensure_kubetune_importable()
    from kubetune.trainer import loop
    from kubetune.trainer.data_prepare import SftSample

    cuda = not args.smoke
    shape = model_shape(args)
    start = args.warmup  # 0-based index of the first timed step; stamps[i] is the end of step i
    with tempfile.TemporaryDirectory(prefix="kt-mfu-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        print(f"building a random Llama {shape} ...", flush=True)
        build_model_dir(args, shape, model_dir)
        spec = job_spec(args, model_dir, work)

        rows_needed = args.batch_size * (args.warmup + args.steps)
        lengths = sample_lengths(int(rows_needed * args.seq_len * 1.05), args.seq_len, seed=1)
        rng = random.Random(2)
        samples = []
        for n in lengths:
            ids = [rng.randrange(3, shape["vocab_size"]) for _ in range(n)]
            samples.append(SftSample(input_ids=ids, labels=list(ids)))
        rows = loop.build_sequences(samples, spec)
        plan = loop.plan_steps(len(rows), 1, spec.hyperparameters)
        tokens, squares = [], []
        for step in range(plan.total_steps):
            picked = [rows[i] for i in loop.micro_batch_indices(step, 0, 0, plan, spec.hyperparameters, 1)]
            tokens.append(sum(len(r) for r in picked))
            squares.append(sum(n * n for r in picked for n in r.lengths))

        timer = StepTimer(cuda, profile_step=args.warmup - 1 if args.profile else None, profile_file=args.profile)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = loop.train_loop(loop.LoopConfig(
            spec=spec, model_dir=str(model_dir), train=samples, checkpoint_dir=str(work / "ckpt"),
            pad_id=0, use_gpu=cuda, sink=timer, compile_blocks=args.compile, attention=args.attention,
        ))
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    timed_tokens = sum(tokens[start:])
    seconds = timer.stamps[-1] - timer.stamps[start - 1]
    frozen = args.method != "full"
    lora_params = result.trainable_parameters if frozen else 0
    base_params = base_parameters(shape)
    mean_context = sum(squares[start:]) / timed_tokens
    tps = timed_tokens / seconds
    peak = args.peak_tflops * 1e12
    per_token_row = flops_per_token(base_params=base_params, lora_params=lora_params, layers=shape["num_hidden_layers"],
                                    hidden=shape["hidden_size"], context=args.seq_len, frozen_base=frozen)
    per_token_sample = flops_per_token(base_params=base_params, lora_params=lora_params,
                                       layers=shape["num_hidden_layers"], hidden=shape["hidden_size"],
                                       context=mean_context, frozen_base=frozen)
    return {
        "method": args.method, "compile": args.compile, "attention": args.attention, "shape": shape,
        "batchSize": args.batch_size, "seqLen": args.seq_len,
        "timedSteps": args.steps, "timedTokens": timed_tokens, "seconds": seconds, "tokensPerSecond": tps,
        "baseParams": base_params, "loraParams": lora_params, "meanSampleContext": mean_context,
        "flopsPerTokenRow": per_token_row, "flopsPerTokenSample": per_token_sample,
        "mfuRow": tps * per_token_row / peak, "mfuSample": tps * per_token_sample / peak,
        "peakTflops": args.peak_tflops, "peakMemoryGiB": peak_gib, "losses": timer.losses,
        "device": torch.cuda.get_device_name() if cuda else "cpu (smoke)",
        "versions": {"torch": torch.__version__, **_versions()},
    }


def _versions() -> dict:
    out = {}
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return out


def report(r: dict) -> str:
    k = 6 if r["method"] == "full" else 4
    s = r["shape"]
    lines = [
        f"device: {r['device']}  versions: {r['versions']}",
        f"model: Llama hidden {s['hidden_size']}, {s['num_hidden_layers']} layers, {s['num_attention_heads']} heads "
        f"({s['num_key_value_heads']} kv), intermediate {s['intermediate_size']}, vocab {s['vocab_size']}; "
        f"method {r['method']}{' (compiled blocks)' if r['compile'] else ''}, {r['attention']}; packed {r['batchSize']} x {r['seqLen']}",
        f"N (base, without input embeddings) = {r['baseParams']:,}; N_lora = {r['loraParams']:,}",
        f"FLOPs/token = {k}*N + 6*N_lora + 12*L*d*s  ({k}N: "
        + ("full fine-tuning: forward 2N + activation-grads 2N + weight-grads 2N" if k == 6 else
           "frozen base: forward 2N + activation-grads 2N, no weight-grads") + ")",
        f"  s = row length {r['seqLen']}:                 {r['flopsPerTokenRow'] / 1e9:.3f} GFLOP/token",
        f"  s = mean in-sample context {r['meanSampleContext']:.0f}: {r['flopsPerTokenSample'] / 1e9:.3f} GFLOP/token",
        f"timed: {r['timedSteps']} steps, {r['timedTokens']:,} tokens in {r['seconds']:.2f} s -> "
        f"{r['tokensPerSecond']:,.0f} tokens/s"
        + (f"; peak GPU memory {r['peakMemoryGiB']:.1f} GiB" if r["peakMemoryGiB"] is not None else ""),
        f"MFU = tokens/s * FLOPs/token / ({r['peakTflops']:g} TFLOP/s peak): "
        f"{100 * r['mfuRow']:.1f}% (s = row), {100 * r['mfuSample']:.1f}% (s = in-sample)",
        f"losses: {' '.join(f'{x:.3f}' for x in r['losses'])}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("lora", "qlora", "full"), default="lora")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (all linear layers)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch-size", type=int, default=8, help="packed rows per optimizer step")
    p.add_argument("--seq-len", type=int, default=2048, help="packed row length (maxSeqLength)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compiles happen here)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations (its extra forward is not counted as model FLOPs)")
    p.add_argument("--attention", choices=("sdpa", "flex_attention"), default="flex_attention",
                   help="LoopConfig.attention; sdpa: 4D block-diagonal mask (every tile computed); "
                        "flex_attention (default): fully masked tiles skipped")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile every transformer block (LoopConfig.compile_blocks; default on; "
                        "the first --warmup steps absorb the compile)")
    p.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS,
                   help="the accelerator's dense bf16 peak (default H100 SXM: 989)")
    p.add_argument("--smoke", action="store_true", help="2 steps of a tiny model on CPU, to check the script")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--profile", metavar="FILE",
                   help="profile the last warm-up step (torch.profiler; needs --warmup 2 or more) and write its op table here")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the first step compiles kernels and is never timed)")
    if args.smoke:  # CPU: flex attention has no backward there, and compiling would take minutes
        args.batch_size, args.seq_len, args.warmup, args.steps = 2, 128, 2 if args.profile else 1, 1
        args.attention, args.compile = "sdpa", False
    if args.profile and args.warmup < 2:
        p.error("--profile needs --warmup 2 or more (it profiles the last warm-up step)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device (torch.cuda.is_available() is False); this benchmark measures GPU MFU. "
              "Run it on a GPU machine, or pass --smoke for a 2-step CPU check of the script.", file=sys.stderr)
        return 2
    if args.method == "qlora" and (args.smoke or importlib.util.find_spec("bitsandbytes") is None):
        print("error: --method qlora needs a CUDA GPU and the bitsandbytes package "
              "(pip install bitsandbytes); use --method lora otherwise", file=sys.stderr)
        return 2
    r = run(args)
    print(report(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
