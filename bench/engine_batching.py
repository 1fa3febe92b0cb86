"""Local engine: N concurrent greedy requests generated one at a time (the old engine, the
baseline) against the same N in one left-padded batch (the engine's batcher), in one run.

    .venv/bin/python bench/engine_batching.py [--model DIR] [--requests 8] [--max-tokens 64]
        [--threads 2]

The quickstart's model (out/quickstart/base-model) and its catalogue prompts by default, else
the tiny test model. Prints wall time and process CPU time for each way and the ratios; the
answers of both ways are compared (they must be identical). CPU seconds per generated token is
the figure that holds up on a loaded machine; wall time only means something when `uptime`
shows a load under ~2.5 on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _model_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    smollm = REPO / "out" / "quickstart" / "base-model"
    if (smollm / "config.json").is_file():
        return smollm
    from tests.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(Path(tempfile.mkdtemp(prefix="kubetune-bench-")))


def _prompts(n: int) -> list[str]:
    import random

    from kubetune.quickstart_data import catalogue_examples

    return [r["prompt"] for r in catalogue_examples(n, random.Random(11), set())]


def _clock() -> tuple[float, float]:
    t = os.times()
    return time.perf_counter(), t.user + t.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Hugging Face model folder (default: the quickstart's, else the tiny model)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="out/bench/engine_batching.json", help="where to write the figures")
    args = parser.parse_args()
    from bench import results as bench_results

    about = bench_results.machine()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from kubetune.serving.engine_local import LocalEngine

    model = _model_dir(args.model)
    engine = LocalEngine(model, served_name="bench", threads=args.threads, max_batch_size=args.requests)
    jobs = [engine._job("chat", {"model": "bench", "messages": [{"role": "user", "content": p}],
                                 "max_tokens": args.max_tokens, "temperature": 0})
            for p in _prompts(args.requests)]
    engine._generate(jobs[0], None)  # warm-up: first-call allocations are not what we measure

    wall0, cpu0 = _clock()
    alone = [engine._generate(job, None) for job in jobs]
    wall1, cpu1 = _clock()

    async def together():
        return await asyncio.gather(*[engine._submit(job) for job in jobs])

    batched = asyncio.run(together())
    wall2, cpu2 = _clock()
    engine.executor.shutdown()

    tokens = sum(r.completion_tokens for r in alone)
    same = [a.text for a in alone] == [b.text for b in batched]
    print(f"model {model}, {args.requests} requests, max {args.max_tokens} tokens, {args.threads} torch threads, "
          f"{tokens} tokens generated; load average {os.getloadavg()[0]:.2f}")
    print(f"  one at a time (baseline): {wall1 - wall0:7.1f} s wall, {cpu1 - cpu0:7.1f} CPU s, "
          f"{tokens / (wall1 - wall0):6.1f} tokens/s, {tokens / (cpu1 - cpu0):6.1f} tokens/CPU-s")
    print(f"  one batch (engine):       {wall2 - wall1:7.1f} s wall, {cpu2 - cpu1:7.1f} CPU s, "
          f"{tokens / (wall2 - wall1):6.1f} tokens/s, {tokens / (cpu2 - cpu1):6.1f} tokens/CPU-s")
    print(f"  ratio: x{(wall1 - wall0) / (wall2 - wall1):.2f} wall, x{(cpu1 - cpu0) / (cpu2 - cpu1):.2f} CPU; "
          f"identical answers: {'yes' if same else 'NO'}; rows finished alone after a near-tie: "
          f"{engine.regenerated_alone}")
    bench_results.write(args.json, "engine_batching", about, {
        "model": str(model), "requests": args.requests, "maxTokens": args.max_tokens, "threads": args.threads,
        "tokens": tokens, "alone": {"wallSeconds": wall1 - wall0, "cpuSeconds": cpu1 - cpu0},
        "batched": {"wallSeconds": wall2 - wall1, "cpuSeconds": cpu2 - cpu1}, "identicalAnswers": same})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
