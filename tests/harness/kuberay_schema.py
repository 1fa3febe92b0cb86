"""Check a rendered RayJob as KubeRay would admit it.

`rayjob_errors(rayjob, version)` uses kubetune's own schema of the fields it renders
(operator/kuberay_rayjob.yaml) as that KubeRay release accepts them, and validates each pod
template strictly as a core PodTemplate: it needs nothing outside the repository.
`upstream_rayjob_errors(rayjob)` checks against KubeRay's full generated CRD in
../shared/schemas when it is there (None when not), as an extra check.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate

from kubetune.operator.kuberay import rayjob_schema

from .emulator import load_crd_files
from .schema_tools import closed_schema
from .server import KUBERAY_RAYJOB_CRD

KUBERNETES_VERSION = "1.37.0"


def _pod_templates(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    templates = {"spec.rayClusterSpec.headGroupSpec.template": cluster["headGroupSpec"]["template"]}
    for index, group in enumerate(cluster.get("workerGroupSpecs") or []):
        templates[f"spec.rayClusterSpec.workerGroupSpecs[{index}].template"] = group["template"]
    if "submitterPodTemplate" in spec:
        templates["spec.submitterPodTemplate"] = spec["submitterPodTemplate"]
    return templates


def _messages(errors) -> list[str]:
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors)


def rayjob_errors(rayjob: dict[str, Any], version: str) -> list[str]:
    """Every reason KubeRay `version` (or the API server, for the pods) would refuse `rayjob`."""
    errors = _messages(jsonschema.Draft7Validator(rayjob_schema(version)).iter_errors(rayjob))
    for where, template in _pod_templates(rayjob).items():
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
        try:
            kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {exc.message}")
    return errors


def upstream_rayjob_errors(rayjob: dict[str, Any]) -> list[str] | None:
    """Errors against KubeRay's own RayJob CRD beside the checkout; None when it is absent."""
    if not KUBERAY_RAYJOB_CRD.exists():
        return None
    crd = load_crd_files(KUBERAY_RAYJOB_CRD)[0]
    schema = closed_schema(next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return _messages(jsonschema.Draft7Validator(schema).iter_errors(rayjob))
