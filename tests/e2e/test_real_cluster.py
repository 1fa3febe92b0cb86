"""The real-cluster path of docs/real-cluster.md, run against a cluster you point it at.

Needs: KUBETUNE_E2E=1, a kubeconfig (KUBECONFIG or ~/.kube/config) whose cluster answers, the
kubetune chart installed (operator running, CRDs present) and KubeRay installed. Images must be
pullable by the cluster. Skips with the reason otherwise: there is no cluster on CI machines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

KUBECTL = shutil.which("kubectl")


def _kubectl(*args: str, check: bool = True, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("KUBETUNE_E2E") != "1":
        pytest.skip("set KUBETUNE_E2E=1 to run against a real cluster (see docs/real-cluster.md)")
    if not KUBECTL:
        pytest.skip("kubectl not found")
    try:
        _kubectl("version", "--request-timeout=5s", timeout=15)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no reachable cluster: {exc}")
    crds = _kubectl("get", "crd", "-o", "name").stdout
    if "finetunejobs.kubetune.io" not in crds:
        pytest.skip("kubetune CRDs not installed: helm install kubetune charts/kubetune")
    namespace = f"kubetune-e2e-{uuid.uuid4().hex[:6]}"
    _kubectl("create", "namespace", namespace)
    yield namespace
    _kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_invalid_finetunejob_is_rejected_by_the_api_server(cluster, tmp_path: Path):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: bad}\nspec:\n"
        "  baseModel: {uri: pvc://models/base}\n"
        "  datasets: [{name: d, uri: d.jsonl, format: chat}]\n"
        "  method: {type: qlora}\n  output: {uri: pvc://out/x}\n"
    )
    result = _kubectl("apply", "-n", cluster, "-f", str(manifest), check=False)
    assert result.returncode != 0
    assert "qlora needs 4-bit loading" in result.stderr


def test_single_worker_job_reaches_a_terminal_phase(cluster, repo_root: Path):
    manifest = repo_root / "examples" / "finetunejobs" / "single-node-job.yaml"
    _kubectl("apply", "-n", cluster, "-f", str(manifest))
    deadline = time.monotonic() + float(os.environ.get("KUBETUNE_E2E_TIMEOUT", "1800"))
    phase = None
    while time.monotonic() < deadline:
        status = json.loads(_kubectl("get", "ftj", "tiny-lora-job", "-n", cluster, "-o", "json").stdout).get("status", {})
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(10)
    assert phase == "Succeeded", f"phase {phase}: {status.get('failure')}"
