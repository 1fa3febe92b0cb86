"""False rollbacks and detections of automatic canary analysis, at 20, 100 and 1,000 requests per window.

Each trial is one whole analysis (`windows` windows, default 3) of a canary against stable, on
seeded synthetic traffic with the gateway's own histogram buckets: 1% 5xx answers, TTFT
log-normal around 200 ms, inter-token latency around 30 ms (8 gaps per answer), a 2% safety
flag ratio, and one rating in four answers (60% +1, 30% 0, 10% -1). Scenarios:

    same          the canary is stable's twin: every rollback is a false one
    errors+5pp    5xx rate 1% -> 6%
    ttft x2       TTFT median doubled
    itl x2        inter-token latency median doubled
    safety+10pp   flag ratio 2% -> 12%
    feedback-0.5  mean rating +0.5 -> 0.0

The decision is `kubetune.operator.canary_analysis.judge` and `decide` as the operator runs them
(`minRequests` set to the window size, the spec's other defaults). The baseline, on the same
windows in the same run, is the margin-only rule of threshold-based canary tools: the same
margins with no significance test (a check fails whenever the canary is worse by more than its
margin).

    .venv/bin/python bench/canary_analysis.py [--trials 300] [--sizes 20 100 1000] [--quick]

Prints a table and the ratio of false-rollback rates, and writes out/bench/canary_analysis.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))  # bench.*; appended: operator/ must not shadow the stdlib

SCENARIOS = ("same", "errors+5pp", "ttft x2", "itl x2", "safety+10pp", "feedback-0.5")
STABLE = {"error": 0.01, "ttft": 0.2, "itl": 0.03, "flag": 0.02, "ratings": (0.1, 0.3, 0.6)}
ITL_GAPS_PER_ANSWER = 8
RATED_SHARE = 0.25


def traffic(scenario: str, canary: bool) -> dict:
    t = dict(STABLE)
    if not canary:
        return t
    if scenario == "errors+5pp":
        t["error"] = 0.06
    elif scenario == "ttft x2":
        t["ttft"] = 0.4
    elif scenario == "itl x2":
        t["itl"] = 0.06
    elif scenario == "safety+10pp":
        t["flag"] = 0.12
    elif scenario == "feedback-0.5":
        t["ratings"] = (0.3, 0.4, 0.3)
    return t


def cumulative(kind: str, values: np.ndarray, bounds: tuple[float, ...]) -> dict[tuple, float]:
    edges = [*bounds, math.inf]
    return {(kind, b): float(np.count_nonzero(values <= b)) for b in edges}


def window(rng: np.random.Generator, n: int, t: dict) -> dict[tuple, float]:
    """One version's counters over a window of n requests, as the gateway's /metrics would give them."""
    from kubetune.serving.metrics import ITL_BUCKETS, TTFT_BUCKETS

    errors = int(rng.binomial(n, t["error"]))
    ok = n - errors
    counts: dict[tuple, float] = {("ok",): float(ok), ("error",): float(errors)}
    counts.update(cumulative("ttft", rng.lognormal(math.log(t["ttft"]), 0.5, ok), TTFT_BUCKETS))
    counts.update(cumulative("itl", rng.lognormal(math.log(t["itl"]), 0.4, ok * ITL_GAPS_PER_ANSWER), ITL_BUCKETS))
    counts[("scored",)] = float(ok)
    counts[("flagged",)] = float(rng.binomial(ok, t["flag"]))
    rated = int(rng.binomial(ok, RATED_SHARE))
    for rating, share in zip((-1, 0, 1), rng.multinomial(rated, t["ratings"])):
        counts[("rating", rating)] = float(share)
    return counts


def analyse(rng: np.random.Generator, scenario: str, n: int, specs: dict) -> dict[str, tuple[str, int]]:
    """Each rule's (outcome, windows used) on the same windows: outcome promote | rollback."""
    from kubetune.operator import canary_analysis as ca

    windows = next(iter(specs.values())).windows
    observed = [(window(rng, n, traffic(scenario, True)), window(rng, n, traffic(scenario, False)))
                for _ in range(windows)]
    out: dict[str, tuple[str, int]] = {}
    for rule, spec in specs.items():
        passed = 0
        for used, (canary, stable) in enumerate(observed, 1):
            judged = ca.judge(canary, stable, spec)
            assert judged is not None, "every simulated window has minRequests requests"
            decision = ca.decide(judged, passed, spec)
            passed = decision.windows_passed
            if decision.action:
                out[rule] = (decision.action, used)
                break
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="analyses per scenario and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 1000], help="requests per version per window")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 trials (make bench)")
    parser.add_argument("--out", default="out/bench/canary_analysis.json")
    args = parser.parse_args()
    trials = 100 if args.quick else args.trials

    from bench import results as bench_results
    from bench.results import wilson
    from kubetune.api.modeldeployment import CanaryAnalysis

    about = bench_results.machine()
    results = []
    print(f"{trials} analyses of {args.windows} windows per cell, alpha {args.alpha}; rollback rate "
          f"(95% Wilson interval); 'same' is the false-rollback rate", flush=True)
    print(f"{'requests':>8} {'scenario':<13} {'ours':>22} {'margin only':>22} {'windows (ours)':>15}")
    for size in args.sizes:
        ours = CanaryAnalysis(windows=args.windows, min_requests=size, alpha=args.alpha)
        # level = alpha / (5 * windows) >= 1: every p-value passes, so only the margins decide.
        margin_only = ours.model_copy(update={"alpha": 5.0 * args.windows})
        specs = {"ours": ours, "marginOnly": margin_only}
        for scenario in SCENARIOS:
            rng = np.random.default_rng([args.seed, size, SCENARIOS.index(scenario)])
            rollbacks = {rule: 0 for rule in specs}
            used = []
            seconds = time.perf_counter()
            for _ in range(trials):
                outcome = analyse(rng, scenario, size, specs)
                for rule, (action, n) in outcome.items():
                    rollbacks[rule] += action == "rollback"
                used.append(outcome["ours"][1])
            seconds = time.perf_counter() - seconds
            row = {"requests": size, "scenario": scenario, "trials": trials, "seconds": round(seconds, 1),
                   "meanWindowsOurs": round(sum(used) / len(used), 2)}
            cells = []
            for rule, hits in rollbacks.items():
                low, high = wilson(hits, trials)
                row[rule] = {"rollbacks": hits, "rate": hits / trials, "ci95": [round(low, 4), round(high, 4)]}
                cells.append(f"{hits / trials:.3f} ({low:.3f}-{high:.3f})")
            results.append(row)
            print(f"{size:>8} {scenario:<13} {cells[0]:>22} {cells[1]:>22} {row['meanWindowsOurs']:>15}", flush=True)

    print()
    for size in args.sizes:
        same = next(r for r in results if r["requests"] == size and r["scenario"] == "same")
        o, b = same["ours"]["rate"], same["marginOnly"]["rate"]
        hits = f"{same['ours']['rollbacks']} vs {same['marginOnly']['rollbacks']} of {same['trials']}"
        ratio = f"margin-only/ours {b / o:.1f}x: {hits}" if o > 0 else hits
        detected = [r["ours"]["rate"] for r in results if r["requests"] == size and r["scenario"] != "same"]
        print(f"{size} requests/window: false rollbacks ours {o:.3f} (goal <= {args.alpha}) vs margin-only {b:.3f}"
              f" ({ratio}); detection ours min {min(detected):.2f}, mean {sum(detected) / len(detected):.2f}")
    bench_results.write(args.out, "canary_analysis", about, {"alpha": args.alpha, "windows": args.windows,
                                                            "trials": trials, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
