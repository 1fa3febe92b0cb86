"""Run the gateway (and the local engine) on one event loop until SIGTERM/SIGINT.

On a signal the gateway stops accepting, finishes what it can, and flushes the payload log to
disk before the process exits: Kubernetes sends SIGTERM before it kills a pod.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

log = logging.getLogger("kubetune.serving.server")


async def _site(app: web.Application, host: str, port: int, *, reuse_port: bool = False
                ) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port or None)
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
    models = f"; models: {', '.join(served)}" if served else ""
    announce = f"kubetune serve: gateway on http://{args.host}:{port} -> {upstream}{models}"
    return await _run_until_signal(gateway, runners, announce)


async def _run_until_signal(gateway, runners: list[web.AppRunner], announce: str, *, out=None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _tune_gc()
    print(announce, file=out or sys.stdout, flush=True)
    try:
        await stop.wait()
    finally:
        print("kubetune serve: shutting down, flushing the payload log", file=sys.stderr, flush=True)
        for r in runners:
            await r.cleanup()
        gateway.close_logs()
    return 0


def _tune_gc() -> None:
    """Keep the cyclic collector's pauses off the streams. Everything built at start-up (modules,
    the app, the scorer's client) is frozen out of collection, and the young generation collects
    less often: a proxy makes many short-lived objects that die by reference counting anyway, and
    full collections over a large heap stall every stream on the loop (p99)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _loop_factory():
    """uvloop when installed: it roughly halves the event loop's own CPU per streamed event,
    which is most of what a pass-through proxy spends. Plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _worker(config, host: str, port: int) -> int:
    """One of `--workers N`: the gateway on the shared port, plus its Unix socket for peers."""
    from .gateway import Gateway
    from .peers import peer_app, socket_path

    gateway = Gateway(config)
    runner = peer_runner = None
    try:
        runner, _ = await _site(gateway.app(), host, port, reuse_port=True)
        peer_runner = web.AppRunner(peer_app(gateway.payloads), access_log=None, handle_signals=False)
        await peer_runner.setup()
        path = socket_path(config.peer_dir, config.worker_index)
        await web.UnixSite(peer_runner, str(path)).start()  # its existence tells the supervisor we are up
    except BaseException:
        for r in (runner, peer_runner):
            if r is not None:
                await r.cleanup()
        gateway.close_logs()
        raise
    return await _run_until_signal(gateway, [runner, peer_runner],
                                   f"kubetune serve: worker {config.worker_index} (pid {os.getpid()}) on "
                                   f"http://{host}:{port}", out=sys.stderr)


def serve_forever(args, make_config) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_main(args, make_config))


def serve_worker(config, host: str, port: int) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_worker(config, host, port))
