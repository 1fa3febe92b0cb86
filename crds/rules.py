"""Cross-field rules, written once and enforced twice.

Each rule belongs to a model class and carries the CEL expression the API server evaluates
(`x-kubernetes-validations` on that class's schema in the generated CRD) and the Python
predicate that `kubetune validate` and the operator evaluate, so a manifest is judged the same
way offline and in the cluster. Tests evaluate both sides on the same table of manifests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel


@dataclass(frozen=True)
class Rule:
    cel: str
    message: str
    field_path: str
    """Where the error points, relative to the object the rule is on (CEL `fieldPath`)."""
    check: Callable[[Any], bool]
    """Python twin of `cel`, called with the parsed model; True means valid."""

    def as_crd(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


@dataclass(frozen=True)
class RuleViolation:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


_REGISTRY: dict[type, list[Rule]] = {}


def register(cls: type, *rules: Rule) -> None:
    """Attach rules to a model class (used by the CRD generator and by `check_rules`)."""
    _REGISTRY.setdefault(cls, []).extend(rules)


def rules_for(cls: type) -> list[Rule]:
    return list(_REGISTRY.get(cls, ()))


def check_rules(model: BaseModel, path: str) -> list[RuleViolation]:
    """Every violated rule anywhere in `model`, each with its full field path."""
    violations = [
        RuleViolation(path + rule.field_path, rule.message)
        for rule in rules_for(type(model))
        if not rule.check(model)
    ]
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        child = f"{path}.{field.alias or name}" if path else (field.alias or name)
        if isinstance(value, BaseModel):
            violations += check_rules(value, child)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    violations += check_rules(item, f"{child}[{i}]")
    return violations
