"""`kubetune serve --gateway-only --workers N`: N gateway processes on one port.

One gateway process saturates one core at a few hundred streamed requests per second (its event
loop, the payload log and the safety batcher share one GIL). The supervisor starts N workers
that each listen on the same port with SO_REUSEPORT (the kernel spreads connections over them),
restarts one that dies, forwards SIGTERM and waits until every worker has flushed its payload
log. It owns a private temporary folder (mode 0700) holding the workers' Unix sockets (feedback
for a request another worker served) and PROMETHEUS_MULTIPROC_DIR (metrics summed over
workers), and removes it at the end.

Each worker writes its own payload log, `<log-dir>/worker-<i>/payloads.jsonl` (the monitor
reads `payloads.jsonl*` under the log folder recursively).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("kubetune.serving.supervisor")

START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0  # a worker flushes its log in well under a second; this is the last resort
MAX_BACKOFF_SECONDS = 10.0
_WORKER_ENTRY = "from kubetune.serving.supervisor import worker_main; worker_main()"


def worker_log_dir(log_dir: str | None, index: int) -> str | None:
    return str(Path(log_dir) / f"worker-{index}") if log_dir else None


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket: it fixes port 0 to a real port and keeps it
    ours while workers come and go; only listening sockets receive connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"--port {port}: cannot bind {host}:{port}: {exc.strerror or exc}") from None
    return sock, sock.getsockname()[1]


class _Worker:
    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.failures = 0  # quick deaths in a row, for the restart back-off
        self.next_start = 0.0


class Supervisor:
    def __init__(self, config, *, host: str, port: int, workers: int, log_level: str = "INFO"):
        if workers < 1:
            raise ValueError(f"--workers: {workers}; must be 1 or more")
        config.check()
        self.config = config
        self.host = host
        self.count = workers
        self.log_level = log_level
        self._reserved, self.port = reserve_port(host, port)
        self._private = Path(tempfile.mkdtemp(prefix="kubetune-gateway-"))  # mode 0700
        if len(str(self._private)) > 80:  # a Unix socket path must fit in 108 bytes
            shutil.rmtree(self._private)
            self._private = Path(tempfile.mkdtemp(prefix="kubetune-gateway-", dir="/tmp"))
        self.peer_dir = self._private / "peers"
        self.metrics_dir = self._private / "metrics"
        self.peer_dir.mkdir()
        self.metrics_dir.mkdir()
        self.workers = [_Worker(i) for i in range(workers)]
        self._stopping = False

    # ---- one worker

    def _payload(self, index: int) -> bytes:
        config = dataclasses.replace(self.config, log_dir=worker_log_dir(self.config.log_dir, index),
                                     worker_index=index, worker_count=self.count, peer_dir=str(self.peer_dir))
        return json.dumps({"config": dataclasses.asdict(config), "host": self.host, "port": self.port,
                           "log_level": self.log_level}).encode()

    def _spawn(self, worker: _Worker) -> None:
        from .peers import socket_path

        socket_path(self.peer_dir, worker.index).unlink(missing_ok=True)
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir))
        # The config (which may hold the upstream key) goes over stdin, not argv or the environment.
        worker.proc = subprocess.Popen([sys.executable, "-c", _WORKER_ENTRY], stdin=subprocess.PIPE, env=env)
        worker.proc.stdin.write(self._payload(worker.index))
        worker.proc.stdin.close()
        worker.started = time.monotonic()

    def _ready(self, worker: _Worker) -> bool:
        from .peers import socket_path

        return socket_path(self.peer_dir, worker.index).exists()

    def _reap(self, worker: _Worker) -> None:
        """A worker exited on its own: count it dead for the live gauges and schedule a restart."""
        from prometheus_client import multiprocess

        code = worker.proc.returncode
        multiprocess.mark_process_dead(worker.proc.pid, str(self.metrics_dir))
        quick = time.monotonic() - worker.started < 10
        worker.failures = worker.failures + 1 if quick else 0
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (worker.failures - 1)) if quick else 0.0
        worker.next_start = time.monotonic() + delay
        worker.proc = None
        log.error("gateway worker %d exited with code %s; restarting it in %.1f s", worker.index, code, delay)
        print(f"kubetune serve: worker {worker.index} exited with code {code}; restarting", file=sys.stderr,
              flush=True)

    # ---- the whole set

    def start(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not all(self._ready(w) for w in self.workers):
            for worker in self.workers:
                if worker.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"gateway worker {worker.index} exited with code {worker.proc.returncode} "
                                       "while starting (its error is above)")
            if self._stopping:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway workers did not start within {START_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.05)

    def watch(self) -> None:
        """Restart workers that die, until stop is asked for."""
        while not self._stopping:
            now = time.monotonic()
            for worker in self.workers:
                if worker.proc is not None and worker.proc.poll() is not None:
                    self._reap(worker)
                if worker.proc is None and now >= worker.next_start and not self._stopping:
                    self._spawn(worker)
            time.sleep(0.2)

    def request_stop(self, *_signal) -> None:
        self._stopping = True

    def stop(self) -> int:
        """SIGTERM every worker, wait until each has flushed its log, remove the private folder."""
        self._stopping = True
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        code = 0
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                rc = worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("gateway worker %d did not stop within %.0f s; killing it", worker.index,
                          STOP_TIMEOUT_SECONDS)
                worker.proc.kill()
                rc = worker.proc.wait()
            if rc not in (0, -signal.SIGTERM):
                code = 1
        self._reserved.close()
        shutil.rmtree(self._private, ignore_errors=True)
        return code


def run_supervisor(config, *, host: str, port: int, workers: int, log_level: str = "INFO") -> int:
    sup = Supervisor(config, host=host, port=port, workers=workers, log_level=log_level)
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGINT, sup.request_stop)
    try:
        sup.start()
        if not sup._stopping:
            print(f"kubetune serve: gateway on http://{host}:{sup.port} -> {config.upstream} "
                  f"({workers} workers)", flush=True)
            sup.watch()
    finally:
        print("kubetune serve: stopping the workers, flushing their payload logs", file=sys.stderr, flush=True)
        code = sup.stop()
    return code


def worker_main() -> None:
    """A worker process: read its config from stdin, serve until SIGTERM."""
    from .gateway import GatewayConfig
    from .server import serve_worker

    _die_with_parent()
    spec = json.loads(sys.stdin.buffer.read())
    logging.basicConfig(level=spec["log_level"].upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker-{spec['config']['worker_index']} %(name)s: "
                               "%(message)s")
    config = GatewayConfig(**spec["config"])
    try:
        code = serve_worker(config, spec["host"], spec["port"])
    except (ValueError, FileNotFoundError) as exc:
        print(f"kubetune serve: worker {config.worker_index}: {exc}", file=sys.stderr, flush=True)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _die_with_parent() -> None:
    """If the supervisor is killed outright, its workers get SIGTERM (and flush) rather than linger."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
