"""`kubetune train`: the whole pipeline, locally (`-f job.yaml --local`) or in a pod (`--config FILE`).

Exit codes: 0 trained, evaluated and exported; 2 the job cannot run as specified (the message
says what to change; nothing was trained); 1 training or export failed (checkpoints are kept and
a rerun resumes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kubetune.manifests import load_finetunejob

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "/etc/kubetune/finetunejob.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run a FineTuneJob: prepare data, train on Ray, evaluate, export",
        description="Run a FineTuneJob end to end. Locally: `kubetune train -f job.yaml --local` "
        "starts a local Ray and writes the artifact to spec.output.uri (or --output). In a pod, "
        "the operator runs `kubetune train --config FILE` against the KubeRay cluster. A rerun "
        "with the same spec resumes from the latest checkpoint.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--file", type=Path, metavar="JOB", help="FineTuneJob manifest (YAML or JSON)")
    source.add_argument(
        "--config", type=Path, metavar="FILE",
        help=f"in-pod entrypoint: the operator's rendered FineTuneJob (usually {DEFAULT_CONFIG})",
    )
    parser.add_argument("--local", action="store_true", help="start a local Ray on this machine (with -f)")
    parser.add_argument("--output", type=Path, metavar="DIR", help="artifact folder (default: spec.output.uri)")
    parser.add_argument("--quiet", action="store_true", help="no console progress (progress.jsonl is still written)")
    parser.set_defaults(func=run_train)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("ray", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _offline_defaults(local: bool) -> None:
    """Never reach a hub at run time; locally also keep Ray quiet and self-contained."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # A workstation is shared: idle OpenMP threads that spin (the default) steal the cores
        # the other workers and processes need; on this 2-core machine under load a SmolLM2
        # step took several times longer spinning than sleeping. Must be set before torch loads;
        # Ray workers started here inherit it.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_train(args: argparse.Namespace) -> int:
    from .errors import TrainerConfigError
    from .progress import default_sinks

    _configure_logging()
    path = args.file or args.config
    local = bool(args.local)
    _offline_defaults(local)
    try:
        job = load_finetunejob(path)
    except ValueError as exc:
        print(f"kubetune train: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.file is not None and not args.local:
        print("kubetune train: -f runs locally; pass --local to confirm (in a pod use --config)", file=sys.stderr)
        return EXIT_CONFIG

    from .pipeline import output_dir_of, run

    try:
        output_dir = output_dir_of(job, args.output)
        sinks = default_sinks(output_dir, console=not args.quiet)
    except (TrainerConfigError, OSError) as exc:
        print(f"kubetune train: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = run(job, output=args.output, local=local, sinks=[sinks], base_dir=path.resolve().parent)
    except TrainerConfigError as exc:
        print(f"kubetune train: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - any failure after training started
        logging.getLogger(__name__).error("training failed", exc_info=True)
        print(f"kubetune train: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        sinks.close()
    published = args.output is None and job.spec.output.uri.startswith("s3://")
    print(f"artifact written to {job.spec.output.uri if published else result.output_dir}")
    return EXIT_OK
