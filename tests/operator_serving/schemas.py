"""Validate rendered children the way the API server would, offline.

Core kinds go through kubernetes-validate (strict: unknown fields are errors). Custom kinds
(prometheus-operator, KEDA) go through their CRD's openAPIV3Schema with jsonschema, made
strict the same way the API server prunes: an object schema with `properties` and no
`x-kubernetes-preserve-unknown-fields` rejects unknown fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

CORE_VERSION = "1.37.0"


def strict_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in schema:
        out["type"] = schema["type"]
    for key in ("enum", "required", "minimum", "maximum", "pattern", "minLength", "maxLength", "minItems", "maxItems", "format"):
        if key in schema and not (key == "format" and schema[key] in ("int32", "int64", "byte")):
            out[key] = schema[key]
    if "properties" in schema:
        out["properties"] = {k: strict_jsonschema(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_jsonschema(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = strict_jsonschema(schema["items"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            out[key] = [strict_jsonschema(s) for s in schema[key]]
    return out


def crd_schema(path: Path, kind: str, version: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == kind:
            for ver in doc["spec"]["versions"]:
                if ver["name"] == version:
                    return strict_jsonschema(ver["schema"]["openAPIV3Schema"])
    raise LookupError(f"{path}: no {kind} {version}")


def validate_custom(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
