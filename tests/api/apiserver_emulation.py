"""What the API server does with a CRD schema, emulated for tests.

The Kubernetes emulator has no schema validation, so these tests apply the generated
`openAPIV3Schema` the way kube-apiserver does: structural defaulting, OpenAPI v3.0 validation
(jsonschema Draft 4 semantics: boolean exclusiveMinimum, plus `nullable`), strict field
validation (unknown fields are errors, as `kubectl apply` asks for by default), and every
`x-kubernetes-validations` CEL rule evaluated with cel-python, including transition rules
against `oldSelf`.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import celpy
import jsonschema


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting: fill missing properties that have a default, recursively."""
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                apply_defaults(sub, obj[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj:
                if key not in schema.get("properties", {}):
                    apply_defaults(extra, obj[key])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(schema["items"], item)
    return obj


def to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3.0 structural schema -> Draft 4 JSON Schema with strict unknown fields."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if "properties" in schema:
        out["properties"] = {k: to_jsonschema(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        out["items"] = to_jsonschema(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(schema["additionalProperties"])
    if "anyOf" in schema:
        out["anyOf"] = [to_jsonschema(s) for s in schema["anyOf"]]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def schema_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(to_jsonschema(schema))
    return [
        ".".join(str(p) for p in err.absolute_path) + ": " + err.message
        for err in validator.iter_errors(obj)
    ]


def _walk(schema: dict[str, Any], obj: Any, old: Any, path: str) -> Iterator[tuple[dict, Any, Any, str]]:
    yield schema, obj, old, path
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                old_sub = old.get(name) if isinstance(old, dict) else None
                yield from _walk(sub, obj[name], old_sub, f"{path}.{name}" if path else name)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            yield from _walk(schema["items"], item, None, f"{path}[{i}]")


_ENV = celpy.Environment()


def cel_errors(schema: dict[str, Any], obj: Any, old: Any = None) -> list[str]:
    """Messages of violated CEL rules; transition rules (oldSelf) only run on updates."""
    errors = []
    for node_schema, value, old_value, path in _walk(schema, obj, old, ""):
        for rule in node_schema.get("x-kubernetes-validations", []):
            uses_old = "oldSelf" in rule["rule"]
            if uses_old and old_value is None:
                continue
            activation = {"self": celpy.json_to_cel(value)}
            if uses_old:
                activation["oldSelf"] = celpy.json_to_cel(old_value)
            program = _ENV.program(_ENV.compile(rule["rule"]))
            result = program.evaluate(activation)
            if isinstance(result, Exception) or not bool(result):
                errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    return errors


def admit(schema: dict[str, Any], manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every reason the API server would reject `manifest` (defaulted first, as it does)."""
    obj = apply_defaults(schema, copy.deepcopy(manifest))
    errors = schema_errors(schema, obj)
    if errors:
        return errors  # CEL runs only on schema-valid objects
    old_obj = apply_defaults(schema, copy.deepcopy(old)) if old is not None else None
    return cel_errors(schema, obj, old_obj)
