"""`kubetune operator`: run the operator against the cluster of KUBECONFIG or in-cluster."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the kubetune operator (FineTuneJob, ModelDeployment)",
        description="Reconcile FineTuneJobs and ModelDeployments. Settings come from KUBETUNE_* "
        "environment variables (see docs/operator.md); flags override them.",
    )
    parser.add_argument("--namespace", "-n", action="append", default=None, metavar="NS",
                        help="watch this namespace (repeatable); default: KUBETUNE_NAMESPACES or cluster-wide")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz (default: KUBETUNE_LIVENESS)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="N",
                        help="Prometheus metrics port, 0 disables (default: KUBETUNE_METRICS_PORT or 8080)")
    parser.add_argument("--standalone", action="store_true",
                        help="no peering with other operator replicas (use with a single replica)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    parser.add_argument("--verbose", action="store_true", help="log handler progress (every handler run of every object)")
    parser.add_argument("--debug", action="store_true", help="log every API call")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import logging

    import kopf

    from .k8s import KubeApi, load_api_client
    from .main import load_handlers, run_operator
    from .settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"kubetune operator: {exc}", file=sys.stderr)
        return 2
    if args.namespace:
        settings = dataclasses.replace(settings, namespaces=tuple(args.namespace))
    kopf.configure(
        debug=args.debug,
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not (args.verbose or args.debug):
        # kopf logs every handler run per object at INFO: thousands of lines a minute with
        # hundreds of jobs. Warnings and errors (failed handlers) still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        api = KubeApi(load_api_client(args.kubeconfig), threads=settings.api_threads)
    except Exception as exc:  # no kubeconfig, unreadable file
        print(f"kubetune operator: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    load_handlers()  # imported before the collector is tuned: their objects live for good
    _tune_gc()
    liveness = args.liveness if args.liveness is not None else settings.liveness_endpoint
    metrics_port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_operator(settings, api=api, standalone=args.standalone,
                                    liveness_endpoint=liveness or None, metrics_port=metrics_port))
    except KeyboardInterrupt:
        return 130
    return 0


def _tune_gc() -> None:
    """Fewer, cheaper cyclic collections. Everything imported at start-up is frozen out of
    them, and the young generation collects less often: the operator makes many short-lived
    dicts (watch events, rendered children) that die by reference counting anyway, and each
    full collection walks every body kopf and the caches keep, which at hundreds of jobs
    costs more than the work it interrupts."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _loop_factory():  # noqa: ANN202 - a callable returning an event loop, or None for asyncio's
    """uvloop when installed (the operator extra pulls it): the operator is one event loop
    busy with watch streams and HTTP, where uvloop's faster I/O and callbacks pay directly."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
