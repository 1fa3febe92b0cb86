"""Plain HTTP access to the emulator for tests: simulated controllers and waiting.

No controllers run in the emulator. Tests play KubeRay, the scheduler and the kubelet by
PATCHing child status over HTTP, exactly as those controllers would.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

PATHS = {
    "finetunejobs": "/apis/kubetune.io/v1alpha1",
    "modeldeployments": "/apis/kubetune.io/v1alpha1",
    "rayjobs": "/apis/ray.io/v1",
    "rayclusters": "/apis/ray.io/v1",
    "jobs": "/apis/batch/v1",
    "deployments": "/apis/apps/v1",
    "roles": "/apis/rbac.authorization.k8s.io/v1",
    "rolebindings": "/apis/rbac.authorization.k8s.io/v1",
    "horizontalpodautoscalers": "/apis/autoscaling/v2",
    "poddisruptionbudgets": "/apis/policy/v1",
    "servicemonitors": "/apis/monitoring.coreos.com/v1",
    "podmonitors": "/apis/monitoring.coreos.com/v1",
    "prometheusrules": "/apis/monitoring.coreos.com/v1",
    "scaledobjects": "/apis/keda.sh/v1alpha1",
    "cronjobs": "/apis/batch/v1",
    "leases": "/apis/coordination.k8s.io/v1",
}


def object_path(plural: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    """The API path of an object (core plurals under /api/v1)."""
    base = PATHS.get(plural, "/api/v1")
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             message: str | Callable[[], str] = "") -> T:
    """Poll until `predicate()` returns something truthy; return it or fail with the last value.

    A callable `message` is evaluated at the timeout, so it can show the state then (an
    f-string argument shows the state when the wait began).

    Timeouts are multiplied by KUBETUNE_TEST_TIMEOUT_SCALE (default 3): a passing check returns
    as soon as it holds, so the scale only lengthens failures, and keeps a loaded 2-core CI
    machine from turning slow reconciles into false failures.
    """
    timeout *= float(os.environ.get("KUBETUNE_TEST_TIMEOUT_SCALE", "3"))
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    what = message() if callable(message) else message
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last value: {last!r}")


class KubeHttp:
    """A tiny synchronous client for the emulator (what controllers would send)."""

    def __init__(self, base_url: str):
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def close(self) -> None:
        self.http.close()

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        resp = self.http.get(object_path(plural, namespace, name))
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def list(self, plural: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        resp = self.http.get(object_path(plural, namespace), params=params)
        resp.raise_for_status()
        return resp.json()["items"]

    def create(self, plural: str, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(object_path(plural, namespace), json=body)
        resp.raise_for_status()
        return resp.json()

    def patch(self, plural: str, namespace: str | None, name: str, patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        resp = self.http.patch(
            object_path(plural, namespace, name, subresource),
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        resp.raise_for_status()
        return resp.json()

    def patch_status(self, plural: str, namespace: str | None, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge `status` into the object's status through the /status subresource."""
        return self.patch(plural, namespace, name, {"status": status}, subresource="status")

    def delete(self, plural: str, namespace: str | None, name: str) -> int:
        return self.http.delete(object_path(plural, namespace, name)).status_code


class KubeRaySimulator:
    """Plays KubeRay and the kubelet for one RayJob: status transitions and pods."""

    def __init__(self, http: KubeHttp, namespace: str):
        self.http, self.namespace = http, namespace

    def set_status(self, rayjob: str, **status: Any) -> dict[str, Any]:
        return self.http.patch_status("rayjobs", self.namespace, rayjob, status)

    def initializing(self, rayjob: str) -> dict[str, Any]:
        now = _now()
        return self.set_status(rayjob, jobDeploymentStatus="Initializing", rayClusterName=f"{rayjob}-raycluster", startTime=now)

    def running(self, rayjob: str, job_status: str = "RUNNING") -> dict[str, Any]:
        return self.set_status(rayjob, jobDeploymentStatus="Running", jobStatus=job_status)

    def complete(self, rayjob: str) -> dict[str, Any]:
        return self.set_status(rayjob, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=_now(), succeeded=1)

    def failed(self, rayjob: str, reason: str = "AppFailed", message: str = "", failed: int = 1) -> dict[str, Any]:
        return self.set_status(
            rayjob, jobDeploymentStatus="Failed", jobStatus="FAILED", reason=reason, message=message,
            endTime=_now(), failed=failed,
        )

    def retrying(self, rayjob: str, failed: int) -> dict[str, Any]:
        return self.set_status(rayjob, jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=failed)

    def suspended(self, rayjob: str) -> dict[str, Any]:
        return self.set_status(rayjob, jobDeploymentStatus="Suspended", jobStatus=None)

    def pod(self, name: str, labels: dict[str, str], status: dict[str, Any]) -> dict[str, Any]:
        """Create (or update) a pod with the given status, as the scheduler and kubelet report it."""
        existing = self.http.get("pods", self.namespace, name)
        if existing is None:
            self.http.create("pods", self.namespace, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
                "spec": {"containers": [{"name": "ray-worker", "image": "trainer"}]},
            })
        return self.http.patch_status("pods", self.namespace, name, status)


def unschedulable(message: str = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.") -> dict[str, Any]:
    return {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}


def image_pull_backoff(image: str = "registry.example/trainer:missing") -> dict[str, Any]:
    return {"phase": "Pending", "containerStatuses": [{
        "name": "ray-worker", "ready": False, "restartCount": 0, "image": image, "imageID": "",
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}}}]}


def oom_killed() -> dict[str, Any]:
    return {"phase": "Running", "containerStatuses": [{
        "name": "ray-worker", "ready": False, "restartCount": 1, "image": "trainer", "imageID": "",
        "state": {"running": {}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "message": ""}}}]}


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
