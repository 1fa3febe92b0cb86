"""False alarms and detections of the drift check, at 20, 100 and 1,000 rows per window.

For each window size, `--trials` windows of unchanged traffic and as many windows where half the
prompts are on a new topic are checked against a fresh 1,000-row reference (the size of a
trained artifact's reference.jsonl), all drawn from seeded synthetic traffic: five everyday
topics, and a Kubernetes topic for the shift. Every check is `kubetune.monitoring.drift.compare`
as the monitor job runs it: 8 descriptor signals, 2 TF-IDF and 2 sentence-embedding domain
classifiers, Holm-corrected at `--alpha`. Sentence embeddings of the pool are computed once and
looked up (the same all-MiniLM-L6-v2 vectors the check would compute).

The baseline, on the same windows in the same run, is the fixed-threshold rule the check used
before calibration: Evidently's automatic descriptor test (K-S p < 0.05 up to 1,000 rows, normed
Wasserstein > 0.1 above), its absolute text-content drift (ROC AUC > 0.55) and its embedding
classifier (ROC AUC > 0.55), drifted when half the signals drift or all content signals of one
column do.

    .venv/bin/python bench/drift_calibration.py [--trials 200] [--sizes 20 100 1000] [--alpha 0.05] [--quick]

Prints a table and the ratio of false-alarm rates, and writes out/bench/drift_calibration.json.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = {
    "cooking": "pasta sauce garlic onion oven recipe bake flour butter salt pepper soup salad rice chicken",
    "travel": "flight hotel passport luggage train ticket museum beach visa itinerary airport map city",
    "garden": "tomato soil compost seeds water shade roses lawn mulch pruning weeds harvest fertilizer",
    "money": "budget savings account interest loan mortgage taxes invoice pension credit rent salary",
    "fitness": "running stretching squats protein muscles cardio yoga marathon sleep posture weights",
}
NEW_TOPIC = ("kubernetes pod helm chart operator ingress namespace daemonset statefulset etcd kubelet "
             "scheduler taint toleration configmap secret rbac crd reconcile controller webhook")
OPENERS = ["How do I", "What is the best way to", "Can you explain how to", "Give me tips to", "Why does my"]
VERBS = ["choose", "fix", "plan", "improve", "start with", "compare", "keep track of", "prepare"]
ANSWERS = ["Start by", "A good approach is to", "Most people", "You can", "Try to"]
FILLER = "usually often carefully first then also simply really quickly slowly every week".split()
REFERENCE_ROWS = 1000


def pair(rng: random.Random, vocab: list[str]) -> dict:
    words = " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 6)))
    prompt = f"{rng.choice(OPENERS)} {rng.choice(VERBS)} {words} {rng.choice(FILLER)}?"
    answer = " ".join(f"{rng.choice(ANSWERS)} {rng.choice(VERBS)} the {rng.choice(vocab)} {rng.choice(FILLER)}."
                      for _ in range(rng.randint(1, 4)))
    return {"prompt": prompt, "response": answer}


def pools(seed: int, normal: int, shifted: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    topics = [v.split() for v in TOPICS.values()]
    return ([pair(rng, rng.choice(topics)) for _ in range(normal)],
            [pair(rng, NEW_TOPIC.split()) for _ in range(shifted)])


def embedding_cache(rows: list[dict]):
    from kubetune.monitoring.embeddings import encode

    texts = sorted({r[c] for r in rows for c in ("prompt", "response")})
    started = time.perf_counter()
    vectors = encode(texts)
    print(f"embedded {len(texts)} distinct texts once in {time.perf_counter() - started:.0f} s", flush=True)
    index = {t: i for i, t in enumerate(texts)}
    return lambda batch: vectors[[index[t] for t in batch]]


def legacy_verdict(run, ref_vec: dict, cur_vec: dict) -> bool:
    """The fixed-threshold rule on the described frames of one check (module docstring)."""
    import pandas as pd
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    from kubetune.monitoring.evidently_adapter import DESCRIPTORS

    drifted: dict[str, bool] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for col in run.columns:
            for d in DESCRIPTORS:
                ref, cur = run.reference[f"{col}.{d}"].dropna(), run.current[f"{col}.{d}"].dropna()
                test = get_stattest(ref, cur, ColumnType.Numerical, None)
                drifted[f"{col}.{d}"] = bool(test(ref, cur, ColumnType.Numerical, None).drifted)
            test = get_stattest(run.reference[col], run.current[col], ColumnType.Text, "abs_text_content_drift")
            try:
                drifted[f"{col}.content"] = bool(test(run.reference[col], run.current[col], ColumnType.Text, 0.55).drifted)
            except ValueError:
                pass
            _, is_drift, _ = model(threshold=0.55, bootstrap=False)(pd.DataFrame(cur_vec[col]), pd.DataFrame(ref_vec[col]))
            drifted[f"{col}.embedding"] = bool(is_drift)
    share = sum(drifted.values()) / len(drifted)
    topic = any(all(drifted.get(f"{c}.{k}", False) for k in ("content", "embedding")) for c in run.columns)
    return share >= 0.5 or topic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 1000])
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the fixed-threshold baseline")
    parser.add_argument("--out", default="out/bench/drift_calibration.json")
    parser.add_argument("--quick", action="store_true", help="make bench sizes: --trials 40 --sizes 20 100")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.sizes = 40, [20, 100]

    sys.path.append(str(Path(__file__).resolve().parent.parent))  # appended: operator/ must not shadow the stdlib
    from bench import results as bench_results
    from bench.results import wilson
    from kubetune.monitoring.drift import DriftOptions, compare

    about = bench_results.machine()
    from kubetune.monitoring.records import record_from_row

    biggest = max(args.sizes)
    normal, shifted = pools(args.seed, REFERENCE_ROWS + biggest + 3000, biggest)
    encode = embedding_cache(normal + shifted)
    results = []
    for size in args.sizes:
        counts = {"ours": {"null": 0, "shift": 0}, "baseline": {"null": 0, "shift": 0}}
        seconds = 0.0
        for trial in range(args.trials):
            rng = random.Random(f"{args.seed}/{size}/{trial}")
            picked = rng.sample(range(len(normal)), REFERENCE_ROWS + size)
            reference = [normal[i] for i in picked[:REFERENCE_ROWS]]
            windows = {
                "null": [normal[i] for i in picked[REFERENCE_ROWS:]],
                "shift": [normal[i] for i in picked[REFERENCE_ROWS:REFERENCE_ROWS + size - size // 2]]
                + rng.sample(shifted, size // 2),
            }
            rng.shuffle(windows["shift"])  # the baseline embeds the first 500 rows: a mix, as in a real log
            for kind, window in windows.items():
                options = DriftOptions(alpha=args.alpha, min_samples=10, seed=trial, encode=encode)
                started = time.perf_counter()
                result = compare([record_from_row(r) for r in reference], [record_from_row(r) for r in window], options)
                seconds += time.perf_counter() - started
                counts["ours"][kind] += result.drift_detected
                if not args.no_baseline:
                    vectors = lambda rows: {c: encode([r[c] for r in rows[:500]]) for c in ("prompt", "response")}  # noqa: E731
                    counts["baseline"][kind] += legacy_verdict(result.run, vectors(reference), vectors(window))
            if (trial + 1) % 25 == 0:
                print(f"  {size} rows: {trial + 1}/{args.trials} windows, false alarms {counts['ours']['null']}, "
                      f"detections {counts['ours']['shift']}", flush=True)
        row = {"rows": size, "trials": args.trials, "secondsPerCheck": round(seconds / (2 * args.trials), 3)}
        for who, c in counts.items():
            if who == "baseline" and args.no_baseline:
                continue
            row[who] = {"falseAlarmRate": c["null"] / args.trials, "falseAlarmCI95": wilson(c["null"], args.trials),
                        "detectionRate": c["shift"] / args.trials, "detectionCI95": wilson(c["shift"], args.trials)}
        results.append(row)

    print(f"\nalpha {args.alpha}, reference {REFERENCE_ROWS} rows, {args.trials} windows per cell, "
          f"shift: half the window on a new topic")
    print(f"{'rows':>6} | {'false alarms (ours)':>20} | {'false alarms (baseline)':>24} | {'ratio':>6} | "
          f"{'detection (ours)':>17} | {'detection (baseline)':>21} | s/check")
    for row in results:
        ours, base = row["ours"], row.get("baseline")
        ratio = (f"{base['falseAlarmRate'] / ours['falseAlarmRate']:.1f}x" if base and ours["falseAlarmRate"]
                 else "inf" if base and base["falseAlarmRate"] else "-")
        print(f"{row['rows']:>6} | {ours['falseAlarmRate']:>20.3f} | "
              f"{(base['falseAlarmRate'] if base else float('nan')):>24.3f} | {ratio:>6} | "
              f"{ours['detectionRate']:>17.3f} | {(base['detectionRate'] if base else float('nan')):>21.3f} | "
              f"{row['secondsPerCheck']}")
    bench_results.write(args.out, "drift_calibration", about,
                        {"alpha": args.alpha, "referenceRows": REFERENCE_ROWS, "results": results})
    for row in results:
        print(f"goals at {row['rows']} rows: false alarms <= {args.alpha}: "
              f"{verdict(row['ours']['falseAlarmRate'], row['ours']['falseAlarmCI95'], args.alpha, above=False)}"
              + (f"; detection >= 0.9: "
                 f"{verdict(row['ours']['detectionRate'], row['ours']['detectionCI95'], 0.9, above=True)}"
                 if row["rows"] == 100 else ""))
    return 0


def verdict(rate: float, ci: tuple[float, float], goal: float, *, above: bool) -> str:
    """met / MISSED, or undecided when this many trials cannot tell (the 95% interval holds the goal)."""
    if (rate >= goal) if above else (rate <= goal):
        return "met"
    if ci[0] <= goal <= ci[1]:
        return (f"not shown: {rate:.3f} in this sample, 95% interval {ci[0]:.3f}-{ci[1]:.3f} holds {goal}; "
                "more --trials tell")
    return "MISSED"


if __name__ == "__main__":
    sys.exit(main())
