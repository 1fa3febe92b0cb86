"""Run the gateway (and the local engine) on one event loop until SIGTERM/SIGINT.

On a signal the gateway stops accepting, finishes what it can, and flushes the payload log to
disk before the process exits: Kubernetes sends SIGTERM before it kills a pod.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

log = logging.getLogger("kubetune.serving.server")


async def _site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    sockets = runner.addresses
    return runner, sockets[0][1] if sockets else port


async def _main(args, make_config) -> int:
    from .errors import ApiError
    from .gateway import Gateway

    runners: list[web.AppRunner] = []
    upstream = args.upstream
    served = []
    if not args.gateway_only:
        from .engine_local import LocalEngine

        print(f"kubetune serve: loading {args.model} ...", file=sys.stderr, flush=True)
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(None, lambda: LocalEngine(
                args.model, served_name=args.served_model_name, adapters=dict(args.adapter),
                max_model_len=args.max_model_len, trust_remote_code=args.trust_remote_code, dtype=args.dtype,
                threads=args.threads))
        except ApiError as exc:
            raise ValueError(f"--adapter: {exc.message}") from None
        runner, engine_port = await _site(engine.app(), "127.0.0.1", args.engine_port)
        runners.append(runner)
        upstream = f"http://127.0.0.1:{engine_port}"
        served = [card["id"] for card in engine.model_cards()]
    gateway = Gateway(make_config(args, upstream))
    runner, port = await _site(gateway.app(), args.host, args.port)
    runners.insert(0, runner)  # stop the gateway first, the engine last

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    models = f"; models: {', '.join(served)}" if served else ""
    print(f"kubetune serve: gateway on http://{args.host}:{port} -> {upstream}{models}", flush=True)
    try:
        await stop.wait()
    finally:
        print("kubetune serve: shutting down, flushing the payload log", file=sys.stderr, flush=True)
        for r in runners:
            await r.cleanup()
        gateway.close_logs()
    return 0


def _loop_factory():
    """uvloop when installed: it roughly halves the event loop's own CPU per streamed event,
    which is most of what a pass-through proxy spends. Plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve_forever(args, make_config) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_main(args, make_config))
