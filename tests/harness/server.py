"""Run the emulator on a free localhost port in its own thread, with a kubeconfig for it.

Its own thread and event loop, so sync tests, the kubernetes client, kubectl and an
in-process kopf (in yet another thread) all talk to it over real HTTP like to a cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml

from kubetune.operator.kuberay import crd_documents

from .emulator import KubeEmulator, load_crd_files

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
OUR_CRDS = sorted((REPO / "crds").glob("*.yaml"))
KUBERAY_RAYJOB_CRD = SHARED / "schemas" / "kuberay" / "ray.io_rayjobs.yaml"
"""KubeRay's own generated RayJob CRD, when it sits beside the checkout: an extra check only."""

T = TypeVar("T")


def write_kubeconfig(path: Path, server_url: str, namespace: str = "default") -> Path:
    """A kubeconfig with one context pointing at the emulator (plain HTTP, no auth)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server_url.rstrip("/")}}],
        "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}],
        "current-context": "emulator",
        "preferences": {},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config))
    tmp.replace(path)
    return path


BUILTIN_NAMESPACES = ("default", "kube-system")


def kuberay_crds() -> list[dict[str, Any]]:
    """KubeRay's RayJob and RayCluster kinds as kubetune's schema file declares them (copies:
    the emulator stamps what it registers)."""
    return [json.loads(json.dumps(doc)) for doc in crd_documents()]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: the emulator is one event loop serving every client, and a
    benchmark against it should measure the operator rather than asyncio's pure-Python loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class RunningEmulator:
    """A `KubeEmulator` served over HTTP from a background thread.

    `with RunningEmulator(tmpdir) as k8s:` gives `k8s.url`, `k8s.kubeconfig` and
    `k8s.emulator` (call its async-unsafe methods through `k8s.call(fn)`).
    """

    def __init__(self, workdir: Path, *, kuberay: bool = True, crd_files: list[Path] | None = None,
                 extra_crds: list[dict[str, Any]] | None = None):
        self.workdir = Path(workdir)
        self.kuberay = kuberay
        self.crd_files = list(crd_files) if crd_files is not None else list(OUR_CRDS)
        self.extra_crds = list(extra_crds or [])
        self.emulator: KubeEmulator | None = None
        self.url = ""
        self.kubeconfig = self.workdir / "kubeconfig"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> RunningEmulator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._error
        write_kubeconfig(self.kubeconfig, self.url)
        for name in BUILTIN_NAMESPACES:  # as on a real cluster: `-n default` works at once
            body = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).encode()
            request = urllib.request.Request(f"{self.url}/api/v1/namespaces", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10):
                pass

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = KubeEmulator()
        for crd in [*load_crd_files(*self.crd_files), *self.extra_crds]:
            emulator.register_crd(crd)
        if self.kuberay:  # kubetune's own RayJob/RayCluster CRDs: the suite needs nothing outside the repo
            for crd in kuberay_crds():
                emulator.register_crd(crd)
        async with emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
            emulator.drop_watches()
            await asyncio.sleep(0.05)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the emulator's loop (safe access to its state)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        assert self._loop is not None
        future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    # Convenience wrappers used by tests.
    def get(self, plural: str, namespace: str | None, name: str, group: str | None = None) -> dict[str, Any] | None:
        return self.call(lambda: self.emulator.get_object(plural, namespace, name, group))

    def list(self, plural: str, namespace: str | None = None, group: str | None = None) -> list[dict[str, Any]]:
        return self.call(lambda: self.emulator.list_objects(plural, namespace, group))

    def fail_next(self, method: str, path: str, status: int = 500, times: int = 1, after_write: bool = False) -> None:
        self.call(lambda: self.emulator.fail_next(method, path, status, times, after_write=after_write))

    def drop_watches(self) -> int:
        return self.call(lambda: self.emulator.drop_watches())

    def requests(self) -> list[tuple[str, str, int]]:
        return self.call(lambda: list(self.emulator.request_log))
