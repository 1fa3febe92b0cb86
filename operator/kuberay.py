"""What kubetune expects of KubeRay: the releases it supports, the RayJob schema it renders
against, and the probes KubeRay injects into the Ray pods it starts.

One place, so the docs, the render tests, the image smoke tests and `make kind-e2e` agree.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import yaml

SUPPORTED_KUBERAY_VERSIONS = ("1.3", "1.4", "1.5")
"""KubeRay minor releases whose RayJob API accepts every field kubetune renders."""

_SINCE = "x-kubetune-kuberay-since"
_ENUM_SINCE = "x-kubetune-kuberay-enum-since"
_SCHEMA_FILE = "kuberay_rayjob.yaml"

RAYLET_HEALTH_PROBE = "wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
GCS_HEALTH_PROBE = "wget --tries 1 -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success"
HEAD_PROBE = f"{RAYLET_HEALTH_PROBE} && {GCS_HEALTH_PROBE}"
"""The exec probe (`bash -c`) KubeRay 1.3-1.5 injects into head containers that declare none."""
WORKER_PROBE = RAYLET_HEALTH_PROBE
"""The exec probe KubeRay 1.3-1.5 injects into worker containers that declare none."""


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ValueError(f"KubeRay version {version!r}: expected digits and dots, e.g. 1.5") from None


@functools.cache
def crd_documents() -> tuple[dict[str, Any], ...]:
    """The RayJob and RayCluster CustomResourceDefinitions kubetune's schema file holds."""
    text = resources.files(__package__).joinpath(_SCHEMA_FILE).read_text(encoding="utf-8")
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def _prune(schema: Any, version: tuple[int, ...]) -> Any:
    """The schema as `version` knows it: newer properties and enum values dropped, unknown fields
    forbidden wherever properties are listed, kubetune's annotations removed."""
    if isinstance(schema, list):
        return [_prune(item, version) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _prune(value, version) for key, value in schema.items()
           if key not in (_SINCE, _ENUM_SINCE, "properties")}
    if "properties" in schema:
        out["properties"] = {
            name: _prune(sub, version) for name, sub in schema["properties"].items()
            if _version_tuple(sub.get(_SINCE, "0")) <= version
        }
        out["required"] = [name for name in schema.get("required", []) if name in out["properties"]]
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    if _ENUM_SINCE in schema:
        since = schema[_ENUM_SINCE]
        out["enum"] = [value for value in schema["enum"] if _version_tuple(since.get(value, "0")) <= version]
    return out


def rayjob_schema(version: str) -> dict[str, Any]:
    """The openAPIV3Schema of a RayJob as KubeRay `version` (e.g. "1.3") accepts it, limited to
    the fields kubetune renders and reads; JSON Schema draft 7 compatible."""
    crd = next(doc for doc in crd_documents() if doc["spec"]["names"]["kind"] == "RayJob")
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _prune(copy.deepcopy(served["schema"]["openAPIV3Schema"]), _version_tuple(version))
