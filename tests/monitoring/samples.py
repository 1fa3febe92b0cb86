"""A ModelDeployment with monitoring and retraining, as users write it."""

from __future__ import annotations

import copy


def modeldeployment(name: str = "support-bot", namespace: str = "ml", mode: str = "Auto") -> dict:
    body = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {
            "model": {"uri": "pvc://models/support/v1"},
            "resources": {"gpus": 0},
            "monitoring": {"schedule": "*/15 * * * *", "minSamples": 100},
            "retraining": {
                "mode": mode,
                "cooldownSeconds": 0,
                "minSamples": 100,
                "persistentChecks": 2,
                "template": {
                    "metadata": {"labels": {"team": "support"}},
                    "spec": {
                        "baseModel": {"uri": "org/base"},
                        "datasets": [{"name": "base", "uri": "pvc://data/train.jsonl", "format": "chat"}],
                        "method": {"type": "lora"},
                        "output": {"uri": "pvc://models/support/next"},
                    },
                },
            },
        },
    }
    if mode != "Auto":
        body["spec"]["retraining"].pop("template")
    return copy.deepcopy(body)
