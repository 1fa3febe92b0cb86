"""Small helpers shared by the operator's harness tests."""

from __future__ import annotations

from typing import Any

from kubetune.operator.conditions import find_condition
from tests.harness.client import KubeHttp, wait_for
from tests.operator.samples import minimal_spec


def ftj_manifest(name: str, namespace: str, spec: dict[str, Any] | None = None, labels: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": spec if spec is not None else minimal_spec(),
    }


def status_of(http: KubeHttp, namespace: str, name: str) -> dict[str, Any]:
    obj = http.get("finetunejobs", namespace, name)
    return (obj or {}).get("status") or {}


def wait_phase(http: KubeHttp, namespace: str, name: str, phase: str, timeout: float = 15) -> dict[str, Any]:
    """The status once its phase is `phase` (one read: the status returned is the one checked)."""
    def check() -> dict[str, Any] | None:
        status = status_of(http, namespace, name)
        return status if status.get("phase") == phase else None

    return wait_for(check, timeout, message=lambda: f"{namespace}/{name} phase {phase} (now {status_of(http, namespace, name).get('phase')})")


def wait_condition(http: KubeHttp, namespace: str, name: str, type_: str, status: str, reason: str | None = None,
                   timeout: float = 15) -> dict[str, Any]:
    def check():
        cond = find_condition(status_of(http, namespace, name).get("conditions"), type_)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return cond
        return None

    return wait_for(check, timeout, message=f"condition {type_}={status} ({reason}) on {namespace}/{name}")
