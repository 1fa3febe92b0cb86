"""Pure rendering of a FineTuneJob's least-privilege progress channel.

The trainer's in-pod status sink runs as this ServiceAccount: it may read and patch the
status of its own FineTuneJob (by resourceName) and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api import GROUP

from .render_common import child_name, object_meta
from .render_training import service_account_name, training_labels


def role_name(job_name: str) -> str:
    return child_name(job_name, "status-writer")


def render_rbac(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding, all owned by the job."""
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    labels = training_labels(body, "rbac")
    sa = service_account_name(name)
    role = role_name(name)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_meta(body, sa, labels),
            "automountServiceAccountToken": True,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": object_meta(body, role, labels),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["finetunejobs/status"],
                    "resourceNames": [name],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": object_meta(body, role, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
    ]
