"""Building blocks shared by both custom resources.

Every model is strict (unknown fields are errors), camelCase on the wire, and documents
each field with an attribute docstring: those docstrings become the CRD descriptions that
`kubectl explain` shows, so they are written for users, not for us.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import re

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from kubetune.common.images import IMAGE_REFERENCE_PATTERN, is_image_reference

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

# Short strings keep CEL cost estimates bounded: the API server rejects a CRD whose rules
# could cost too much on unbounded input.
Name = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
ShortStr = Annotated[str, StringConstraints(max_length=253)]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
Text = Annotated[str, StringConstraints(max_length=32768)]
PromptText = Annotated[str, StringConstraints(max_length=8192)]


def _check_quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError("not a Kubernetes quantity; use forms like 4, 500m, 16Gi")
    return value


Quantity = Annotated[
    str | int,
    AfterValidator(_check_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]
"""A Kubernetes resource quantity such as `4`, `500m` or `16Gi`."""


def _check_image(value: str) -> str:
    if not is_image_reference(value):
        raise ValueError("not an image reference; use [registry/]repository[:tag][@sha256:<64 hex digits>], "
                         "e.g. ghcr.io/kubetune/trainer:0.1.0")
    return value


ImageRef = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512),
    AfterValidator(_check_image),
    Field(json_schema_extra={"pattern": IMAGE_REFERENCE_PATTERN}),
]
"""A container image reference, by tag or pinned by digest (`repo@sha256:...`)."""

Timestamp = Annotated[datetime, Field(strict=False)]
"""RFC 3339 time; parsed from the string form the API server stores."""

FREE_FORM = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


class KubeModel(BaseModel):
    """Base for every API object: camelCase aliases, strict fields, docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,  # "8" is not 8: the API server's schema would reject it too
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it is stored in Kubernetes: camelCase keys, unset fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def list_map(*keys: str) -> dict[str, Any]:
    """Schema extra for a list of named objects merged by key (server-side apply friendly)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """Schema extra carrying CEL rules: (rule, message[, fieldPath])."""
    out = []
    for rule in rules:
        entry = {"rule": rule[0], "message": rule[1]}
        if len(rule) > 2:
            entry["fieldPath"] = rule[2]
        out.append(entry)
    return {"x-kubernetes-validations": out}


class LocalObjectRef(KubeModel):
    """A reference to an object in the same namespace."""

    name: Name
    """Name of the referenced object."""


class SecretKeyRef(KubeModel):
    """A key of a Secret in the same namespace. Secrets are only ever referenced, never inlined."""

    name: Name
    """Name of the Secret."""
    key: ShortStr = "token"
    """Key within the Secret."""


class Toleration(KubeModel):
    """A toleration, as in a Pod spec, so GPU nodes with taints can be used."""

    key: ShortStr | None = None
    """Taint key the toleration applies to; empty matches all keys."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: ShortStr | None = None
    """Taint value the toleration matches."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """One observation about the object, following the Kubernetes API conventions."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    """Condition type in CamelCase, e.g. Ready or Succeeded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    """A CamelCase machine-readable reason for the last transition."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """A human-readable explanation."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was set for."""
    last_transition_time: Timestamp | None = None
    """When the status last changed."""


class ObjectMetaTemplate(KubeModel):
    """Labels and annotations to put on an object created from a template."""

    labels: dict[str, ShortStr] | None = None
    """Labels for the created object."""
    annotations: dict[str, Text] | None = None
    """Annotations for the created object."""
