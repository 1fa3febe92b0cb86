"""The monitor CronJob of a ModelDeployment and its least-privilege RBAC (pure).

The job runs `kubetune monitor --deployment NAME` (an argv list, no shell) on
`spec.monitoring.schedule`. It reads the gateway's payload logs from the same claim and sub-path
the gateway writes to, reads the served artifact's reference profile read-only, and may only get
its ModelDeployment, patch that ModelDeployment's status and get FineTuneJobs (to see whether a
retraining job is still running). Every object is owned by the ModelDeployment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.uris import parse_uri

from .render_common import (
    LABEL_MODELDEPLOYMENT,
    child_name,
    container_security_context,
    object_meta,
    pod_security_context,
    standard_labels,
)
from .settings import DEFAULT_TRAINER_IMAGE

LOG_DIR = "/var/log/kubetune"
PVC_ROOT = "/mnt/pvc"
COMPONENT = "monitor"


class MonitorUnavailable(ValueError):
    """Monitoring cannot run as configured; the message says what to set."""


@dataclass(frozen=True)
class MonitorSettings:
    image: str = DEFAULT_TRAINER_IMAGE
    """An image with `kubetune[monitoring]` (KUBETUNE_MONITOR_IMAGE, default the trainer image)."""
    payload_log_claim: str | None = None
    """The PVC the gateways write payload logs to (KUBETUNE_PAYLOAD_LOG_CLAIM)."""
    image_pull_policy: str = "IfNotPresent"
    cpu: str = "1"
    memory: str = "3Gi"
    active_deadline_seconds: int = 1800
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    """The operator's KUBETUNE_EXTRA_LABELS, put on the CronJob, its RBAC and its pods."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MonitorSettings:
        env = os.environ if env is None else env
        return cls(
            image=env.get("KUBETUNE_MONITOR_IMAGE") or env.get("KUBETUNE_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            payload_log_claim=env.get("KUBETUNE_PAYLOAD_LOG_CLAIM") or None,
            image_pull_policy=env.get("KUBETUNE_IMAGE_PULL_POLICY") or "IfNotPresent",
        )


def monitor_name(deployment: str) -> str:
    return child_name(deployment, "monitor")


def _labels(name: str) -> dict[str, str]:
    return standard_labels(name="kubetune-monitor", component=COMPONENT, instance=name,
                           extra={LABEL_MODELDEPLOYMENT: name})


def render_rbac(md: Mapping[str, Any]) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding for this deployment's monitor only."""
    name = md["metadata"]["name"]
    obj = monitor_name(name)
    labels = _labels(name)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": object_meta(md, obj, labels),
         "automountServiceAccountToken": True},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": object_meta(md, obj, labels),
            "rules": [
                {"apiGroups": ["kubetune.io"], "resources": ["modeldeployments"], "resourceNames": [name],
                 "verbs": ["get"]},
                {"apiGroups": ["kubetune.io"], "resources": ["modeldeployments/status"], "resourceNames": [name],
                 "verbs": ["get", "patch"]},
                {"apiGroups": ["kubetune.io"], "resources": ["finetunejobs"], "verbs": ["get"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": object_meta(md, obj, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": obj},
            "subjects": [{"kind": "ServiceAccount", "name": obj, "namespace": md["metadata"]["namespace"]}],
        },
    ]


def model_claim(md: Mapping[str, Any]) -> str | None:
    """The PVC holding the served artifact (status.modelUri, else spec.model.uri), if any."""
    uri = (md.get("status") or {}).get("modelUri") or ((md.get("spec") or {}).get("model") or {}).get("uri")
    if not uri:
        return None
    try:
        parsed = parse_uri(uri)
    except ValueError:
        return None
    return parsed.claim if parsed.scheme == "pvc" else None


def monitor_args(md: Mapping[str, Any], settings: MonitorSettings) -> list[str]:
    meta = md["metadata"]
    sub = f"{meta['namespace']}/{meta['name']}"
    return [
        "monitor",
        "--deployment", meta["name"],
        "--namespace", meta["namespace"],
        "--log-dir", LOG_DIR,
        "--output-dir", f"{LOG_DIR}/monitoring",
        "--output-uri", f"pvc://{settings.payload_log_claim}/{sub}/monitoring",
    ]


def render_cronjob(md: Mapping[str, Any], settings: MonitorSettings) -> dict[str, Any]:
    if not settings.payload_log_claim:
        raise MonitorUnavailable(
            "monitoring reads the gateway's payload logs from a shared volume: set KUBETUNE_PAYLOAD_LOG_CLAIM "
            "(the chart's serving.payloadLogClaim) on the operator"
        )
    meta = md["metadata"]
    name = meta["name"]
    spec = md.get("spec") or {}
    monitoring = spec.get("monitoring") or {}
    obj = monitor_name(name)
    labels = _labels(name)
    volumes: list[dict[str, Any]] = [
        {"name": "payload-logs", "persistentVolumeClaim": {"claimName": settings.payload_log_claim}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "payload-logs", "mountPath": LOG_DIR, "subPath": f"{meta['namespace']}/{name}"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    claim = model_claim(md)
    if claim and claim != settings.payload_log_claim:
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    container = {
        "name": "monitor",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kubetune"],
        "args": monitor_args(md, settings),
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
            {"name": "KUBETUNE_PVC_ROOT", "value": PVC_ROOT},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": {
            "requests": {"cpu": settings.cpu, "memory": settings.memory},
            "limits": {"memory": settings.memory},
        },
        "securityContext": {**container_security_context(), "readOnlyRootFilesystem": True},
        "volumeMounts": mounts,
    }
    pod = {
        "metadata": {"labels": labels},
        "spec": {
            "serviceAccountName": obj,
            "restartPolicy": "Never",
            "securityContext": pod_security_context(),
            "containers": [container],
            "volumes": volumes,
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": object_meta(md, obj, labels),
        "spec": {
            "schedule": monitoring.get("schedule", "*/30 * * * *"),
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "suspend": monitoring.get("enabled", True) is False,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": 1,
                    "activeDeadlineSeconds": settings.active_deadline_seconds,
                    "ttlSecondsAfterFinished": 86400,
                    "template": pod,
                },
            },
        },
    }


def render_monitor(md: Mapping[str, Any], settings: MonitorSettings) -> list[dict[str, Any]]:
    """All monitor children: RBAC first, so the first run finds its permissions."""
    return [*render_rbac(md), render_cronjob(md, settings)]
