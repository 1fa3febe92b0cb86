"""Manifest validation that reports every error at once, each with its field path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .common import API_VERSION
from .finetunejob import FineTuneJob
from .modeldeployment import ModelDeployment
from .rules import check_rules

KINDS: dict[str, type[BaseModel]] = {"FineTuneJob": FineTuneJob, "ModelDeployment": ModelDeployment}


@dataclass(frozen=True)
class FieldError:
    """One problem in a manifest: where it is and what is allowed."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestError(ValueError):
    """A manifest that does not satisfy the API; carries every error found."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _describe(err: dict[str, Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"got {value!r}, allowed: {ctx.get('expected', '')}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{msg} (got {type(value).__name__} {value!r})"
    return f"{msg} (got {value!r})"


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # Unions report one error per member ("str", "int"); keep the path readable.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p in {"str", "int", "float", "bool"} and len(loc) > 1 and p == loc[-1]))
        out.append(FieldError(_loc_to_path(loc), _describe(err)))
    return out


def check_object(doc: Any) -> tuple[Any, list[FieldError]]:
    """(the model, []) for a valid FineTuneJob or ModelDeployment dict, else (None, every error).

    Validates once: callers that need the model (the operator on every reconcile, the parse
    functions) do not build it a second time.
    """
    if not isinstance(doc, dict):
        return None, [FieldError("", f"expected a mapping, got {type(doc).__name__}")]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind not in KINDS:
        return None, [FieldError("kind", f"got {kind!r}, allowed: {' | '.join(KINDS)}")]
    errors = []
    if api_version != API_VERSION:
        errors.append(FieldError("apiVersion", f"got {api_version!r}, allowed: {API_VERSION!r}"))
    try:
        model = KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        return None, errors + [e for e in _pydantic_errors(exc) if e.path not in ("apiVersion", "kind")]
    errors += [FieldError(v.path, v.message) for v in check_rules(model, "")]
    return (None, errors) if errors else (model, [])


def validate_object(doc: Any) -> list[FieldError]:
    """All errors in one manifest (a FineTuneJob or ModelDeployment as a dict); [] if valid."""
    return check_object(doc)[1]


def _parse(doc: dict[str, Any], cls: type[BaseModel]) -> Any:
    model, errors = check_object(doc)
    if errors:
        raise ManifestError(errors)
    if not isinstance(model, cls):
        raise ManifestError([FieldError("kind", f"got {doc.get('kind')!r}, expected {cls.__name__!r}")])
    return model


def parse_finetunejob(doc: dict[str, Any]) -> FineTuneJob:
    """A FineTuneJob with every rule checked; raises ManifestError listing all problems."""
    return _parse({"apiVersion": API_VERSION, "kind": "FineTuneJob", **doc}, FineTuneJob)


def parse_modeldeployment(doc: dict[str, Any]) -> ModelDeployment:
    """A ModelDeployment with every rule checked; raises ManifestError listing all problems."""
    return _parse({"apiVersion": API_VERSION, "kind": "ModelDeployment", **doc}, ModelDeployment)
