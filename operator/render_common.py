"""Pure helpers every renderer shares: child names, labels, owner references, pod security.

Serving and monitoring renderers use these too, so all children of kubetune look alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

MAX_NAME = 63
PART_OF = "kubetune"
MANAGED_BY = "kubetune-operator"
LABEL_FINETUNEJOB = "kubetune.io/finetunejob"
LABEL_MODELDEPLOYMENT = "kubetune.io/modeldeployment"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PASSTHROUGH = (KUEUE_QUEUE_LABEL, "kueue.x-k8s.io/priority-class")
"""Labels copied from the parent to the workload so Kueue admits it into the right queue."""

_INVALID = re.compile(r"[^a-z0-9-]+")


def child_name(parent: str, suffix: str = "", max_length: int = MAX_NAME) -> str:
    """`<parent>-<suffix>`, deterministic, a DNS label of at most `max_length` characters.

    Too long names are cut and get a short hash of the full name, so two long parents
    that share a prefix still get different children.
    """
    full = f"{parent}-{suffix}" if suffix else parent
    if len(full) <= max_length and _INVALID.sub("-", full) == full:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    tail = "-" + _INVALID.sub("-", suffix.lower()).strip("-") if suffix else ""
    head = _INVALID.sub("-", parent.lower()).strip("-")[: max_length - len(tail) - len(digest) - 1].rstrip("-")
    return f"{head or 'x'}{tail}-{digest}"


def standard_labels(
    *, name: str, component: str, instance: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The app.kubernetes.io/* labels of one child."""
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    labels.update(extra or {})
    return labels


def passthrough_labels(parent_labels: Mapping[str, str] | None) -> dict[str, str]:
    """Kueue's queue and priority labels, copied from the parent."""
    return {k: v for k, v in (parent_labels or {}).items() if k in KUEUE_PASSTHROUGH}


def owner_reference(parent: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference: the child is garbage-collected with its parent."""
    meta = parent["metadata"]
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    parent: Mapping[str, Any], name: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """metadata of a child in the parent's namespace, owned by the parent."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": parent["metadata"]["namespace"],
        "labels": dict(labels),
        "ownerReferences": [owner_reference(parent)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod_security_context() -> dict[str, Any]:
    """Pods run as a non-root user with the runtime's default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """No privilege escalation, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }


def add_labels(child: dict[str, Any], extra: Mapping[str, str]) -> dict[str, Any]:
    """The operator-wide labels (KUBETUNE_EXTRA_LABELS) on a rendered child and its pod templates.

    For cost attribution and policy engines, which look at pods as much as at the objects
    that create them. Labels the renderer set win: selectors and Kueue's labels keep their
    values. Changes `child` in place (a freshly rendered object) and returns it.
    """
    if not extra:
        return child
    for meta in _label_targets(child):
        meta["labels"] = {**extra, **(meta.get("labels") or {})}
    return child


def _label_targets(obj: Any) -> list[dict[str, Any]]:
    """The object's metadata and every template's metadata under it (Deployments, Jobs,
    CronJobs' job templates, RayJobs' head, worker and submitter pods)."""
    found: list[dict[str, Any]] = []
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
        found.append(obj["metadata"])

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if (key == "template" or key.endswith("Template")) and isinstance(value, dict):
                    found.append(value.setdefault("metadata", {}))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj.get("spec") if isinstance(obj, dict) else None)
    return found
