"""Validate KEDA and prometheus-operator objects with maintained typed models (cloudcoil).

The models are generated from each project's CRDs and kept on PyPI
(`cloudcoil-models-keda`, `cloudcoil-models-prometheus-operator`), so these checks need
nothing beside the checkout. A pydantic model ignores unknown fields, so an object is
accepted only if it also survives a round trip unchanged: a misspelt field is dropped by
the model and reported here, as a strict API server would refuse it.
"""

from __future__ import annotations

import importlib
from typing import Any

import pydantic

MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "cloudcoil.models.keda.v1alpha1",
    ("monitoring.coreos.com/v1", "PodMonitor"): "cloudcoil.models.prometheus_operator.v1",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "cloudcoil.models.prometheus_operator.v1",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "cloudcoil.models.prometheus_operator.v1",
}


def _differences(sent: Any, kept: Any, path: str) -> list[str]:
    if isinstance(sent, dict) and isinstance(kept, dict):
        out = [f"{path}.{key}: unknown field" for key in sent if key not in kept]
        for key in sent.keys() & kept.keys():
            out += _differences(sent[key], kept[key], f"{path}.{key}")
        return out
    if isinstance(sent, list) and isinstance(kept, list) and len(sent) == len(kept):
        return [e for i, (a, b) in enumerate(zip(sent, kept)) for e in _differences(a, b, f"{path}[{i}]")]
    return [] if sent == kept else [f"{path}: {sent!r} is read as {kept!r}"]


def model_errors(obj: dict[str, Any]) -> list[str]:
    """Why the object's kind would refuse it; [] when it is valid."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in MODELS:
        raise LookupError(f"no typed model for {key}")
    model = getattr(importlib.import_module(MODELS[key]), key[1])
    try:
        parsed = model.model_validate(obj)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    kept = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return sorted(e.removeprefix(".") for e in _differences(obj, kept, ""))


def served_crd(api_version: str, kind: str) -> dict[str, Any]:
    """A CustomResourceDefinition that only serves `kind` (for the emulator, which validates
    nothing): objects keep every field, and `model_errors` is what checks them."""
    if (api_version, kind) not in MODELS:
        raise LookupError(f"no typed model for {(api_version, kind)}")
    group, version = api_version.split("/")
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [{"name": version, "served": True, "storage": True, "schema": {
                "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }
