"""kubetune.api: the `kubetune.io/v1alpha1` resources every component reads.

Pure: pydantic models, the cross-field rules, CRD generation and manifest validation.
"""

from .common import API_VERSION, GROUP, VERSION, Condition, KubeModel
from .finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus, immutable_changes
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from .validation import (
    FieldError,
    ManifestError,
    check_object,
    parse_finetunejob,
    parse_modeldeployment,
    validate_object,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "FieldError",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "KubeModel",
    "ManifestError",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "immutable_changes",
    "parse_finetunejob",
    "parse_modeldeployment",
    "validate_object",
    "check_object",
]
