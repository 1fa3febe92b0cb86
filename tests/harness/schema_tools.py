"""JSON Schema helpers for checking objects against CRD openAPIV3Schemas offline."""

from __future__ import annotations

from typing import Any


def closed_schema(schema: Any) -> Any:
    """Close every object schema that lists its properties, as the API server prunes unknown
    fields of structural schemas: an unknown field is an error here, not silently dropped."""
    if isinstance(schema, dict):
        out = {k: closed_schema(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed_schema(v) for v in schema]
    return schema
