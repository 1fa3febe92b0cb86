"""Drift on a 10k + 10k window with two text columns: kubetune's check vs Evidently's DataDriftPreset.

Each measurement runs in its own subprocess so peak memory (max RSS) is its own. Reported:
rows/s end to end (reference + current rows over wall time, including Evidently's report, the
descriptors and the safety figures; by default the drift statistics use a seeded sample of 5,000
rows per side, also measured on all rows), peak RSS, and the embedding-drift method on 10k x 384 vectors. Encoding texts with
MiniLM on a CPU is reported separately (texts/s): the monitor embeds a sample (500 per side by
default), not the whole window.

    .venv/bin/python bench/drift_throughput.py [--rows 10000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(n: int, max_rows: int = 5000) -> dict:
    from kubetune.monitoring.drift import DriftOptions, compare
    from kubetune.monitoring.records import Record

    ref = [Record(r["prompt"], r["response"]) for r in rows(n, 1)]
    cur = [Record(r["prompt"], r["response"]) for r in rows(n, 2)]
    import evidently.legacy.metrics.data_drift.embedding_drift_methods  # noqa: F401
    import evidently.presets  # noqa: F401  (import time is not drift time)

    start = time.perf_counter()
    compare(ref, cur, DriftOptions(embeddings=False, max_rows=max_rows))
    cold = time.perf_counter() - start  # includes loading VADER's lexicon and the toxicity model
    start = time.perf_counter()
    result = compare(ref, cur, DriftOptions(embeddings=False, max_rows=max_rows))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cold_seconds": cold, "rows_per_s": 2 * n / seconds, "peak_rss_mb": peak_rss_mb(),
            "drift_detected": result.summary["drift_detected"], "signals": len(result.summary["signals"])}


def run_baseline(n: int) -> dict:
    import warnings

    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_df, cur_df = pd.DataFrame(rows(n, 1)), pd.DataFrame(rows(n, 2))
    import evidently.legacy.metrics.data_drift.embedding_drift_methods  # noqa: F401  (same warm-up as ours)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        definition = DataDefinition(text_columns=["prompt", "response"])
        snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur_df, data_definition=definition),
                                               Dataset.from_pandas(ref_df, data_definition=definition))
        snap.dict()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows_per_s": 2 * n / seconds, "peak_rss_mb": peak_rss_mb()}


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


def run_ours_all_rows(n: int) -> dict:
    return run_ours(n, max_rows=0)


MODES = {
    "ours": run_ours,
    "ours_all_rows": run_ours_all_rows,
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
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(MODES[args.child](args.rows)))
        return 0

    def best(mode: str, n: int) -> dict:
        return min((measure(mode, n) for _ in range(args.repeat)), key=lambda r: r["seconds"])

    ours, full, base = best("ours", args.rows), best("ours_all_rows", args.rows), best("baseline", args.rows)
    emb, enc = best("embedding", args.rows), best("encode", args.encode_texts)
    print(f"window: {args.rows} + {args.rows} rows, columns prompt and response, cpus={os.cpu_count()}")
    print(f"kubetune drift (descriptors x8, text content x2, safety, Evidently report): {ours['seconds']:.2f} s, "
          f"{ours['rows_per_s']:,.0f} rows/s (first call {ours['cold_seconds']:.2f} s), "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB, drift={ours['drift_detected']}")
    print(f"kubetune drift on all rows (--max-rows 0):                                {full['seconds']:.2f} s, "
          f"{full['rows_per_s']:,.0f} rows/s, peak RSS {full['peak_rss_mb']:.0f} MB, drift={full['drift_detected']}")
    print(f"baseline DataDriftPreset alone:                                    {base['seconds']:.2f} s, "
          f"{base['rows_per_s']:,.0f} rows/s, peak RSS {base['peak_rss_mb']:.0f} MB")
    print(f"ratio kubetune/baseline: time x{ours['seconds'] / base['seconds']:.2f} (sampled), "
          f"x{full['seconds'] / base['seconds']:.2f} (all rows); memory x{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}")
    print(f"embedding drift method, {args.rows} x 384 per side: {emb['seconds']:.2f} s "
          f"(score {emb['score']:.3f}, drifted={emb['drifted']})")
    print(f"MiniLM encoding on CPU: {enc['texts_per_s']:.0f} texts/s ({args.encode_texts} texts)")
    print(json.dumps({"ours": ours, "ours_all_rows": full, "baseline": base, "embedding": emb, "encode": enc}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
