"""The pydantic models and the generated CRD schema (with its CEL rules) agree.

`kubetune validate` judges manifests with the models; the API server judges them with the
CRD. Both run here on one table of good and bad manifests; a disagreement means a user gets
different answers offline and in the cluster.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from kubetune.api import crdgen, validate_object
from tests.api.apiserver_emulation import admit

FTJ: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo"},
    "spec": {
        "baseModel": {"uri": "pvc://models/base"},
        "datasets": [{"name": "train", "uri": "data/train.jsonl", "format": "chat"}],
        "output": {"uri": "pvc://artifacts/demo"},
    },
}
MDEP: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "demo"},
    "spec": {"model": {"fineTuneJobRef": {"name": "demo"}}},
}


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with the dotted `path` set (or deleted when value is DELETE)."""
    doc = copy.deepcopy(base)
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is DELETE:
        del node[parts[-1]]
    elif isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    return doc


DELETE = object()
PREF = [{"name": "pairs", "uri": "p.jsonl", "format": "preference"}]

# (id, manifest, field the error must name or None when valid)
CASES = [
    ("ftj-minimal", FTJ, None),
    ("ftj-int-cpu", with_(FTJ, "spec.resources.cpu", 4), None),
    ("ftj-milli-cpu", with_(FTJ, "spec.resources.cpu", "500m"), None),
    ("ftj-dpo", with_(with_(FTJ, "spec.datasets", PREF), "spec.objective", {"type": "dpo", "beta": 0.2}), None),
    ("ftj-lora-8bit", with_(FTJ, "spec.baseModel.quantization", {"bits": 8}), None),
    ("ftj-qlora", with_(with_(FTJ, "spec.baseModel.quantization", {"bits": 4}), "spec.method", {"type": "qlora"}), None),
    ("ftj-job-engine", with_(FTJ, "spec.engine", "Job"), None),
    ("ftj-affinity-free-form", with_(FTJ, "spec.resources.affinity", {"nodeAffinity": {"x": [1]}}), None),
    ("ftj-hft", with_(FTJ, "spec.method", {"type": "hft", "hft": {"seed": 3, "stages": 2}}), None),
    ("ftj-imbalance", with_(FTJ, "spec.preprocessing.imbalance", {"labelField": "y", "strategy": "undersample"}), None),
    ("ftj-unknown-spec-field", with_(FTJ, "spec.learningRate", 0.1), "spec.learningRate"),
    ("ftj-unknown-nested-field", with_(FTJ, "spec.method", {"type": "lora", "lora": {"rnk": 8}}), "rnk"),
    ("ftj-wrong-type", with_(FTJ, "spec.hyperparameters.batchSize", "8"), "batchSize"),
    ("ftj-wrong-bool", with_(FTJ, "spec.suspend", "yes"), "suspend"),
    ("ftj-rank-zero", with_(FTJ, "spec.method", {"type": "lora", "lora": {"rank": 0}}), "rank"),
    ("ftj-split-too-big", with_(FTJ, "spec.preprocessing.validationSplit", 0.9), "validationSplit"),
    ("ftj-lr-zero", with_(FTJ, "spec.hyperparameters.learningRate", 0), "learningRate"),
    ("ftj-missing-output", with_(FTJ, "spec.output", DELETE), "output"),
    ("ftj-missing-uri", with_(FTJ, "spec.baseModel", {"revision": "main"}), "uri"),
    ("ftj-no-datasets", with_(FTJ, "spec.datasets", []), "datasets"),
    ("ftj-bad-method", with_(FTJ, "spec.method.type", "prefix"), "type"),
    ("ftj-bad-format", with_(FTJ, "spec.datasets.0.format", "csv"), "format"),
    ("ftj-bad-dataset-name", with_(FTJ, "spec.datasets.0.name", "Bad_Name"), "name"),
    ("ftj-bad-quantity", with_(FTJ, "spec.resources.memory", "lots"), "memory"),
    ("ftj-negative-workers", with_(FTJ, "spec.resources.workers", 0), "workers"),
    ("ftj-qlora-needs-4bit", with_(FTJ, "spec.method", {"type": "qlora"}), "baseModel.quantization"),
    ("ftj-qlora-8bit", with_(with_(FTJ, "spec.baseModel.quantization", {"bits": 8}), "spec.method", {"type": "qlora"}), "baseModel.quantization"),
    ("ftj-quantized-full", with_(with_(FTJ, "spec.baseModel.quantization", {"bits": 4}), "spec.method", {"type": "full"}), "baseModel.quantization"),
    ("ftj-dpo-needs-preference", with_(FTJ, "spec.objective", {"type": "dpo"}), "datasets"),
    ("ftj-sft-on-preference", with_(FTJ, "spec.datasets", PREF), "datasets"),
    ("ftj-merge-full", with_(with_(FTJ, "spec.method", {"type": "full"}), "spec.output.mergeAdapter", True), "mergeAdapter"),
    ("ftj-job-two-workers", with_(with_(FTJ, "spec.engine", "Job"), "spec.resources.workers", 2), "engine"),
    ("ftj-lora-knobs-on-full", with_(FTJ, "spec.method", {"type": "full", "lora": {"rank": 4}}), "method.lora"),
    ("ftj-hft-knobs-on-lora", with_(FTJ, "spec.method", {"type": "lora", "hft": {"seed": 1}}), "method.hft"),
    ("ftj-imbalance-needs-label", with_(FTJ, "spec.preprocessing.imbalance", {"strategy": "oversample"}), "labelField"),
    ("ftj-llamaguard-endpoint", with_(FTJ, "spec.evaluation.safety", {"scorer": "llamaGuard"}), "endpoint"),
    ("ftj-bad-gate-metric", with_(FTJ, "spec.evaluation.gates", [{"metric": "bleu", "operator": ">", "threshold": 1}]), "metric"),
    ("mdep-ref", MDEP, None),
    ("mdep-uri", with_(MDEP, "spec.model", {"uri": "pvc://models/base"}), None),
    ("mdep-adapters", with_(MDEP, "spec.adapters", [{"name": "a", "uri": "pvc://x/a"}, {"name": "b", "fineTuneJobRef": {"name": "j"}}]), None),
    ("mdep-both-sources", with_(MDEP, "spec.model.uri", "pvc://models/base"), "model"),
    ("mdep-no-source", with_(MDEP, "spec.model", {"baseModel": "x"}), "model"),
    ("mdep-adapter-both", with_(MDEP, "spec.adapters", [{"name": "a", "uri": "u", "fineTuneJobRef": {"name": "j"}}]), "adapters"),
    ("mdep-min-over-max", with_(MDEP, "spec.autoscaling", {"enabled": True, "minReplicas": 5, "maxReplicas": 2}), "minReplicas"),
    ("mdep-auto-needs-template", with_(MDEP, "spec.retraining", {"mode": "Auto"}), "template"),
    ("mdep-gpus-below-tp", with_(with_(MDEP, "spec.engine.tensorParallelSize", 4), "spec.resources.gpus", 2), "gpus"),
    ("mdep-bad-mode", with_(MDEP, "spec.retraining", {"mode": "Sometimes"}), "mode"),
    ("mdep-canary-over-100", with_(MDEP, "spec.rollout", {"canaryWeight": 150}), "canaryWeight"),
    ("mdep-extra-args-not-string", with_(MDEP, "spec.engine.extraArgs", ["--x", 3]), "extraArgs"),
    (
        "mdep-template-rules-apply",
        with_(MDEP, "spec.retraining", {"mode": "Auto", "template": {"spec": with_(FTJ, "spec.method", {"type": "qlora"})["spec"]}}),
        "quantization",
    ),
    ("mdep-unknown-field", with_(MDEP, "spec.replica", 2), "replica"),
]


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return {
        crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for crd in (crdgen.build_crd(p) for p in crdgen.RESOURCES)
    }


@pytest.mark.parametrize("case_id, manifest, field", CASES, ids=[c[0] for c in CASES])
def test_models_and_crd_agree(schemas, case_id, manifest, field):
    model_errors = [str(e) for e in validate_object(manifest)]
    server_errors = admit(schemas[manifest["kind"]], manifest)
    if field is None:
        assert model_errors == [], model_errors
        assert server_errors == [], server_errors
    else:
        assert model_errors, f"kubetune validate accepted {case_id}"
        assert server_errors, f"the CRD schema accepted {case_id}"
        assert any(field in e for e in model_errors), model_errors
        # jsonschema names an unknown property in the message rather than the path.
        leaf = field.split(".")[-1]
        assert any(leaf in e for e in server_errors), server_errors


def test_every_example_is_admitted(schemas, repo_root):
    seen = 0
    for path in sorted((repo_root / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") not in schemas:
                continue
            seen += 1
            assert validate_object(doc) == [], path
            assert admit(schemas[doc["kind"]], doc) == [], path
    assert seen >= 12


def _started(manifest: dict[str, Any]) -> dict[str, Any]:
    return {**manifest, "status": {"startTime": "2026-01-01T00:00:00Z", "phase": "Training"}}


@pytest.mark.parametrize(
    "change, allowed",
    [
        (lambda m: with_(m, "spec.suspend", True), True),
        (lambda m: with_(m, "spec.backoffLimit", 5), True),
        (lambda m: with_(m, "spec.deployTo", {"name": "x"}), True),
        (lambda m: with_(m, "spec.hyperparameters.learningRate", 0.1), False),
        (lambda m: with_(m, "spec.datasets.0.uri", "other.jsonl"), False),
        (lambda m: with_(m, "spec.resources.workers", 3), False),
        (lambda m: with_(m, "spec.resources.nodeSelector", {"pool": "b"}), False),
        (lambda m: with_(with_(m, "spec.suspend", True), "spec.resources.nodeSelector", {"pool": "b"}), True),
        (lambda m: with_(with_(m, "spec.suspend", True), "spec.resources.tolerations", [{"key": "gpu", "operator": "Exists"}]), True),
    ],
    ids=["suspend", "backoffLimit", "deployTo", "learningRate", "dataset", "workers", "placement-running", "placement-suspended", "tolerations-suspended"],
)
def test_training_spec_immutable_once_started(schemas, change, allowed):
    """The CEL transition rule and `immutable_changes` (the operator's check) agree."""
    from kubetune.api import FineTuneJob, immutable_changes

    old = _started(FTJ)
    new = _started(change(FTJ))
    server_errors = admit(schemas["FineTuneJob"], new, old=old)
    changed = immutable_changes(FineTuneJob.model_validate(old).spec, FineTuneJob.model_validate(new).spec)
    assert (server_errors == []) is allowed, server_errors
    assert (changed == []) is allowed, changed
    # Before training starts everything may change.
    assert admit(schemas["FineTuneJob"], change(FTJ), old=FTJ) == []


def test_affinity_is_guarded_by_the_operator_not_cel(schemas):
    """Free-form affinity cannot be compared within CEL's cost budget; the operator's check does it."""
    from kubetune.api import FineTuneJob, immutable_changes

    old = _started(FTJ)
    new = _started(with_(FTJ, "spec.resources.affinity", {"nodeAffinity": {}}))
    assert admit(schemas["FineTuneJob"], new, old=old) == []
    changed = immutable_changes(FineTuneJob.model_validate(old).spec, FineTuneJob.model_validate(new).spec)
    assert changed == ["spec.resources.affinity"]
