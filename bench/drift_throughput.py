"""Drift on a 10k + 10k window with two text columns: `kubetune monitor --json` vs Evidently's DataDriftPreset.

"ours" is what a user runs, in-process: `kubetune monitor --reference reference.jsonl --current
payloads.jsonl --json summary.json --no-embeddings`, end to end: reading both JSON lines files
(the reference as training pairs, the current window as the gateway's payload log, safety
verdicts included), the safety figures on every row, 8 descriptor and 2 text-content drift
signals, and writing the JSON summary. The HTML report (`--report`) is NOT in the headline
figure; it is measured on its own. Sentence embeddings are off in the headline: encoding texts
with MiniLM is reported separately (texts/s), and the embedding-drift method on 10k x 384.

The baseline is Evidently's `DataDriftPreset` alone on the two text columns of in-memory
DataFrames (no file reading, no descriptors, no safety), in the same run. Each measurement runs
in its own subprocess, so its peak memory (max RSS) is its own; each figure is the fastest of
3 runs after an untimed warm-up run in the same process (imports, VADER's lexicon, the toxicity
model); "first call" is that warm-up of ours, imports included, as a fresh `kubetune monitor` pays.

    .venv/bin/python bench/drift_throughput.py [--rows 10000] [--repeat 1] [--quick]

`--quick` measures only the headline pair (ours with the default sample, and the baseline),
about 30 s, to catch a quiet moment on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = {
    "cooking": "pasta sauce garlic onion oven recipe bake flour butter salt pepper soup salad rice chicken",
    "travel": "flight hotel passport luggage train ticket museum beach visa itinerary airport map city",
    "garden": "tomato soil compost seeds water shade roses lawn mulch pruning weeds harvest fertilizer",
    "money": "budget savings account interest loan mortgage taxes invoice pension credit rent salary",
    "code": "python function error stack trace compile deploy docker container test branch merge review",
}
OPENERS = ["How do I", "What is the best way to", "Can you explain how to", "Give me tips to", "Why does my"]


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    vocab = {k: v.split() for k, v in TOPICS.items()}
    out = []
    for _ in range(n):
        words = vocab[rng.choice(list(vocab))]
        prompt = f"{rng.choice(OPENERS)} {' '.join(rng.choice(words) for _ in range(rng.randint(3, 12)))}?"
        answer = " ".join(f"You can {rng.choice(words)} the {rng.choice(words)} first." for _ in range(rng.randint(1, 4)))
        out.append({"prompt": prompt, "response": answer})
    return out


def payload_line(i: int, row: dict, *, verdict: bool) -> dict:
    """A line as the gateway writes it (docs/contracts.md); `safety` null when not scored."""
    return {"id": f"req-{i:06d}", "time": "2026-11-23T05:00:00Z", "model": "support", "adapter": None,
            **row, "promptTokens": 12, "completionTokens": 30, "latencyMs": 120.5,
            "safety": {"flagged": False, "score": 0.0, "categories": {}} if verdict else None}


def write_files(folder: Path, n: int, *, verdicts: bool = True) -> tuple[Path, Path]:
    reference, current = folder / "reference.jsonl", folder / "payloads.jsonl"
    reference.write_text("".join(json.dumps(r) + "\n" for r in rows(n, 1)), encoding="utf-8")
    current.write_text("".join(json.dumps(payload_line(i, r, verdict=verdicts)) + "\n"
                               for i, r in enumerate(rows(n, 2))), encoding="utf-8")
    return reference, current


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


WARM_RUNS = 3
"""Timed runs after the warm-up, in the same process; the fastest counts (a shared machine's
other jobs only ever add time)."""


def _timed(fn, runs: int = 1) -> tuple[float, float]:
    best = (float("inf"), float("inf"))
    for _ in range(runs):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def run_monitor(n: int, *extra: str, verdicts: bool = True, html: bool = False) -> dict:
    from kubetune.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference, current = write_files(folder, n, verdicts=verdicts)
        summary = folder / "summary.json"
        if html:
            extra = (*extra, "--report", str(folder / "drift.html"))
        argv = ["monitor", "--reference", str(reference), "--current", str(current), "--json", str(summary),
                "--no-embeddings", *extra]

        def once() -> None:
            with contextlib.redirect_stderr(io.StringIO()):
                code = main(argv)
            if code != 0:
                raise SystemExit(f"kubetune monitor exited {code}")

        cold, _ = _timed(once)
        seconds, cpu = _timed(once, WARM_RUNS)
        result = json.loads(summary.read_text())
    return {"seconds": seconds, "cpu_seconds": cpu, "cold_seconds": cold, "rows_per_s": 2 * n / seconds,
            "rows_per_cpu_s": 2 * n / cpu, "peak_rss_mb": peak_rss_mb(), "drift_detected": result["drift_detected"],
            "signals": len(result["signals"]), "sampling": result.get("sampling"),
            "flag_source": result["safety"]["flagSource"]}


def run_baseline(n: int) -> dict:
    import warnings

    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_df, cur_df = pd.DataFrame(rows(n, 1)), pd.DataFrame(rows(n, 2))

    def once() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            definition = DataDefinition(text_columns=["prompt", "response"])
            snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur_df, data_definition=definition),
                                                   Dataset.from_pandas(ref_df, data_definition=definition))
            snap.dict()

    once()
    seconds, cpu = _timed(once, WARM_RUNS)
    return {"seconds": seconds, "cpu_seconds": cpu, "rows_per_s": 2 * n / seconds, "rows_per_cpu_s": 2 * n / cpu,
            "peak_rss_mb": peak_rss_mb()}


def run_embedding_drift(n: int) -> dict:
    import numpy as np

    import evidently.legacy.metrics.data_drift.embedding_drift_methods  # noqa: F401  (import is not drift time)

    from kubetune.monitoring.evidently_adapter import embedding_drift

    rng = np.random.default_rng(0)
    centre = rng.normal(size=384)
    ref = rng.normal(size=(n, 384)) + centre
    cur = rng.normal(size=(n, 384)) + centre
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cur /= np.linalg.norm(cur, axis=1, keepdims=True)
    start = time.perf_counter()
    signal = embedding_drift("bench", ref.astype(np.float32), cur.astype(np.float32))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "score": signal.score, "drifted": signal.drifted, "peak_rss_mb": peak_rss_mb()}


def run_encode(n: int) -> dict:
    from kubetune.monitoring import embeddings

    texts = [r["prompt"] for r in rows(n, 3)]
    embeddings.encode(texts[:8])  # load the model outside the timing
    start = time.perf_counter()
    embeddings.encode(texts)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "texts_per_s": n / seconds, "peak_rss_mb": peak_rss_mb()}


MODES = {
    "ours": run_monitor,
    "ours_all_rows": lambda n: run_monitor(n, "--max-rows", "0"),
    "ours_html": lambda n: run_monitor(n, html=True),
    "ours_rescored": lambda n: run_monitor(n, verdicts=False),
    "baseline": run_baseline,
    "embedding": run_embedding_drift,
    "encode": run_encode,
}


def measure(mode: str, n: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--rows", str(n)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows per side (default 10000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is reported")
    parser.add_argument("--encode-texts", type=int, default=256, help="texts embedded for the encode figure")
    parser.add_argument("--quick", action="store_true", help="only the headline figure and the baseline")
    parser.add_argument("--json", default="out/bench/drift_throughput.json", help="where to write the figures")
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(MODES[args.child](args.rows)))
        return 0
    sys.path.append(str(Path(__file__).resolve().parent.parent))  # appended: operator/ must not shadow the stdlib
    from bench import results as bench_results

    about = bench_results.machine()

    def best(mode: str, n: int) -> dict:
        return min((measure(mode, n) for _ in range(args.repeat)), key=lambda r: r["seconds"])

    load = os.getloadavg()[0]
    ours, base = best("ours", args.rows), best("baseline", args.rows)
    n2 = 2 * args.rows

    def line(label: str, r: dict) -> str:
        return (f"{label:<58} {r['seconds']:5.2f} s {r['rows_per_s']:>7,.0f} rows/s | CPU {r['cpu_seconds']:5.2f} s "
                f"{r['rows_per_cpu_s']:>7,.0f} rows/CPU-s | peak RSS {r['peak_rss_mb']:4.0f} MB")

    print(f"window: {args.rows} + {args.rows} rows ({n2} in all), columns prompt and response, "
          f"cpus={os.cpu_count()}, load average at start {load:.2f}")
    print(line("kubetune monitor --json (default: statistics on 5k/side)", ours)
          + f" | first call (imports included) {ours['cold_seconds']:.2f} s, drift={ours['drift_detected']}")
    print(line("baseline: Evidently DataDriftPreset alone", base))
    print(f"ratio kubetune/baseline (default): time x{ours['seconds'] / base['seconds']:.2f}, "
          f"CPU x{ours['cpu_seconds'] / base['cpu_seconds']:.2f}, memory x{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}")
    print(f"sampling in the summary: {json.dumps(ours['sampling'])}")
    if args.quick:
        print(f"load average at end {os.getloadavg()[0]:.2f}")
        bench_results.write(args.json, "drift_throughput", about, {"rows": args.rows, "ours": ours, "baseline": base})
        return 0
    full, html, rescored = best("ours_all_rows", args.rows), best("ours_html", args.rows), best("ours_rescored", args.rows)
    emb, enc = best("embedding", args.rows), best("encode", args.encode_texts)
    print(line("kubetune monitor --json --max-rows 0 (all rows)", full)
          + f" | time x{full['seconds'] / base['seconds']:.2f} the baseline")
    print(line("kubetune monitor --json --report drift.html", html))
    print(line("kubetune monitor --json, log without safety verdicts", rescored))
    print(f"embedding drift method, {args.rows} x 384 per side: {emb['seconds']:.2f} s "
          f"(score {emb['score']:.3f}, drifted={emb['drifted']}), peak RSS {emb['peak_rss_mb']:.0f} MB")
    print(f"MiniLM encoding on CPU: {enc['texts_per_s']:.0f} texts/s ({args.encode_texts} texts)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    bench_results.write(args.json, "drift_throughput", about, {
        "rows": args.rows, "ours": ours, "ours_all_rows": full, "ours_html": html, "ours_rescored": rescored,
        "baseline": base, "embedding": emb, "encode": enc})
    return 0


if __name__ == "__main__":
    sys.exit(main())
