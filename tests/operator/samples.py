"""FineTuneJob bodies used by the operator tests (as the API server would store them)."""

from __future__ import annotations

import copy
from typing import Any

UID = "0b8f4a52-1d5e-4c8e-9a4f-3f1c2d7e9a10"


def minimal_spec() -> dict[str, Any]:
    return {
        "baseModel": {"uri": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "datasets": [{"name": "support", "uri": "pvc://datasets/support/train.jsonl", "format": "chat"}],
        "output": {"uri": "pvc://models/support-lora"},
        "hyperparameters": {"maxSteps": 20},
    }


def full_spec() -> dict[str, Any]:
    """Every field the renderer turns into pod settings."""
    spec = minimal_spec()
    spec.update({
        "resources": {
            "workers": 4,
            "gpusPerWorker": 2,
            "cpu": "8",
            "memory": "64Gi",
            "sharedMemory": "8Gi",
            "image": "registry.example/kubetune/trainer:0.1.0",
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                    "labelSelector": {"matchLabels": {"kubetune.io/finetunejob": "support-lora"}}}}]}},
            "priorityClassName": "training-high",
        },
        "checkpointing": {"uri": "pvc://checkpoints/support-lora", "everySteps": 50},
        "activeDeadlineSeconds": 7200,
        "backoffLimit": 3,
        "hfTokenSecretRef": {"name": "hf-token", "key": "token"},
    })
    return spec


def body(name: str = "support-lora", namespace: str = "ml", spec: dict[str, Any] | None = None,
         labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 1,
                     "labels": labels or {}, **meta},
        "spec": copy.deepcopy(spec if spec is not None else minimal_spec()),
    }
