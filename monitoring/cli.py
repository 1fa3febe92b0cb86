"""`kubetune monitor`: the drift and safety check, locally or as the in-cluster CronJob.

    kubetune monitor --reference FILE|ARTIFACT --current FILE|LOGDIR [--report out.html] [--json out.json]
    kubetune monitor --deployment NAME [--namespace NS] [--log-dir DIR] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_ERROR, EXIT_DRIFT = 0, 2, 3


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "monitor",
        help="compare served traffic with the training reference (drift, safety)",
        description="Drift and safety check of served traffic against the model's training reference.",
    )
    where = p.add_argument_group("local check")
    where.add_argument("--reference", help="reference JSON lines, a training dataset file, or an artifact folder")
    where.add_argument("--current", nargs="+", help="payload log file(s) or folder(s), or a dataset file")
    where.add_argument("--report", help="write the HTML drift report here")
    where.add_argument("--json", dest="json_out", help="write the JSON summary here (default: print it)")
    where.add_argument("--window-data", help="also write the window as redacted training data (alpaca JSONL), "
                                             "with rated preference pairs in preferences.jsonl beside it")
    where.add_argument("--fail-on-drift", action="store_true", help=f"exit {EXIT_DRIFT} when drift is detected")
    cluster = p.add_argument_group("in-cluster job")
    cluster.add_argument("--deployment", help="ModelDeployment to check; figures go to its status")
    cluster.add_argument("--namespace", default=os.environ.get("KUBETUNE_NAMESPACE"), help="its namespace")
    cluster.add_argument("--log-dir", default="/var/log/kubetune", help="payload log folder (default %(default)s)")
    cluster.add_argument("--output-dir", help="reports and windows (default: <log-dir>/monitoring)")
    cluster.add_argument("--output-uri", help="URI of --output-dir as other pods see it (pvc://...)")
    cluster.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    tuning = p.add_argument_group("thresholds")
    tuning.add_argument("--alpha", type=float,
                        help="chance that unchanged traffic is called drifted, over all signals (default 0.05)")
    tuning.add_argument("--min-samples", type=int, help="fewer pairs: insufficient data (default 200)")
    tuning.add_argument("--drift-share", type=float,
                        help="also require this share of significant signals, or a column's content signals "
                             "all (default: any significant signal)")
    tuning.add_argument("--no-embeddings", action="store_true", help="skip the sentence-embedding signals")
    tuning.add_argument("--embedding-sample", type=int, default=500, help="pairs per side embedded (500)")
    tuning.add_argument("--max-rows", type=int, default=5000,
                        help="pairs per side in the drift statistics, a seeded sample beyond (5000; 0 = all)")
    tuning.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _log(message: str) -> None:
    print(f"kubetune monitor: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.deployment:
        if args.reference or args.current:
            _log("use either --deployment or --reference/--current, not both")
            return EXIT_ERROR
        from .cluster import run_in_cluster

        return run_in_cluster(args, log=_log)
    if not args.reference or not args.current:
        _log("give --reference and --current (a local check) or --deployment (in-cluster)")
        return EXIT_ERROR
    try:
        return _run_local(args)
    except (FileNotFoundError, ValueError) as exc:
        _log(f"error: {exc}")
        return EXIT_ERROR


def options_from(args: argparse.Namespace, *, min_samples: int = 200, drift_share: float | None = None,
                 alpha: float | None = None):
    from .drift import DEFAULT_ALPHA, DriftOptions

    if args.alpha is not None and not 0 < args.alpha < 1:
        raise ValueError(f"--alpha {args.alpha}: expected a level between 0 and 1, such as 0.05")
    if args.drift_share is not None and not 0 <= args.drift_share <= 1:
        raise ValueError(f"--drift-share {args.drift_share}: expected a share between 0 and 1")
    if args.min_samples is not None and args.min_samples < 1:
        raise ValueError(f"--min-samples {args.min_samples}: expected at least 1")
    return DriftOptions(
        alpha=args.alpha if args.alpha is not None else (alpha if alpha is not None else DEFAULT_ALPHA),
        drift_share=args.drift_share if args.drift_share is not None else drift_share,
        min_samples=args.min_samples if args.min_samples is not None else min_samples,
        embeddings=not args.no_embeddings,
        embedding_sample=max(1, args.embedding_sample),
        max_rows=max(0, args.max_rows),
        seed=args.seed,
        log=_log,
    )


def report_loads(summary: dict, which: str, loaded) -> None:
    summary.setdefault("malformed", {})[which] = {"count": loaded.malformed, "lines": loaded.problems}
    if loaded.malformed:
        _log(f"{which}: skipped {loaded.malformed} malformed line(s)")
        for problem in loaded.problems:
            _log(f"  {problem}")


def _run_local(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .drift import compare
    from .files import atomic_write_json
    from .records import load, load_many
    from .reference import reference_file

    options = options_from(args)
    ref_path = reference_file(args.reference)
    reference = load(ref_path)
    current = load_many([Path(p) for p in args.current])
    _log(f"reference {len(reference.records)} pairs ({ref_path}), current {len(current.records)} pairs")
    result = compare(reference.records, current.records, options)
    report_loads(result.summary, "reference", reference)
    report_loads(result.summary, "current", current)
    if args.report:
        result.write_html(Path(args.report))
        _log(f"HTML report: {args.report}")
    if args.window_data:
        from .window import write_window

        data = write_window(current.records, Path(args.window_data))
        result.summary["window"] = {"file": str(data.path), "rows": data.rows, "digest": data.digest,
                                    "excludedFlagged": data.excluded_flagged,
                                    "excludedNegative": data.excluded_negative, "duplicates": data.duplicates,
                                    "preferenceFile": str(data.preference_path),
                                    "preferencePairs": data.preference_pairs}
    if args.json_out:
        atomic_write_json(args.json_out, result.summary)
    else:
        print(json.dumps(result.summary, indent=2, sort_keys=True, default=str))
    _log(result.summary.get("message", ""))
    return EXIT_DRIFT if (args.fail_on_drift and result.drift_detected) else EXIT_OK
