"""Argo CD health checks (Lua run by a real Lua 5.1, the dialect Argo CD's gopher-lua speaks)
and the GitOps examples.

No Argo CD or Flux runs here: the examples are checked for the fields their controllers
require, for paths that exist in this repository, and for values the chart's schema accepts.
"""

from __future__ import annotations

import pytest
import yaml

from tests.chart.chart_render import CHART, REPO

HEALTH = REPO / "deploy" / "argocd" / "health"
GITOPS = REPO / "examples" / "gitops"


def _to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(kind: str, obj: dict) -> tuple[str, str]:
    lua51 = pytest.importorskip("lupa.lua51")
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    script = (HEALTH / f"kubetune.io_{kind}.lua").read_text()
    result = lua.execute(script)
    assert result["status"] in {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
    return result["status"], result["message"]


def cond(kind, status, reason="R", message=""):
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def ftj(status=None, *, suspend=False, generation=1):
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "j", "generation": generation}, "spec": {"suspend": suspend}}
    if status is not None:
        obj["status"] = status
    return obj


def mdep(status=None, *, generation=1):
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "m", "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("obj", "want", "says"),
    [
        (ftj(), "Progressing", "Waiting for the kubetune operator"),
        (ftj({"phase": "Training", "observedGeneration": 1, "conditions": [cond("Accepted", "True"), cond("Running", "True")],
              "progress": {"step": 40, "totalSteps": 200}}), "Progressing", "Training: step 40/200"),
        (ftj({"phase": "Succeeded", "observedGeneration": 1, "conditions": [cond("Succeeded", "True")],
              "artifact": {"uri": "pvc://models/j", "kind": "adapter"},
              "evaluation": {"passed": True, "gates": [{"metric": "evalLoss", "operator": "<=", "threshold": 2.0, "value": 1.1, "passed": True}]}}),
         "Healthy", "artifact pvc://models/j"),
        (ftj({"phase": "Succeeded", "conditions": [cond("Succeeded", "True")],
              "evaluation": {"passed": False, "gates": [{"metric": "exactMatch", "operator": ">=", "threshold": 0.8, "value": 0.5, "passed": False}]}}),
         "Degraded", "exactMatch 0.5 (wanted >= 0.8)"),
        (ftj({"phase": "Failed", "conditions": [cond("Failed", "True", "OOMKilled")],
              "failure": {"reason": "OOMKilled", "message": "worker 1 exceeded 16Gi"}}), "Degraded", "OOMKilled: worker 1 exceeded 16Gi"),
        (ftj({"phase": "Pending", "conditions": [cond("Accepted", "False", "InvalidSpec", "spec.method.lora: only for lora")]}),
         "Degraded", "Spec rejected: spec.method.lora"),
        (ftj({"phase": "Suspended", "conditions": [cond("Suspended", "True")]}, suspend=True), "Suspended", "checkpoints are kept"),
        (ftj({"phase": "Training", "observedGeneration": 1}, suspend=True), "Suspended", "Suspended"),
        (ftj({"phase": "Training", "observedGeneration": 1}, generation=2), "Progressing", "generation 2"),
    ],
    ids=["no-status", "training", "succeeded", "gates-failed", "failed", "rejected", "suspended", "suspend-requested", "stale"],
)
def test_finetunejob_health(obj, want, says):
    status, message = health("FineTuneJob", obj)
    assert (status, says in message) == (want, True), message


@pytest.mark.parametrize(
    ("obj", "want", "says"),
    [
        (mdep(), "Progressing", "Waiting for the kubetune operator"),
        (mdep({"phase": "WaitingForTraining", "conditions": [cond("Ready", "False", "WaitingForTraining", "FineTuneJob j is Training")]}),
         "Progressing", "FineTuneJob j is Training"),
        (mdep({"phase": "Deploying", "observedGeneration": 1, "conditions": [cond("Ready", "False"), cond("Progressing", "True", "RollingOut", "1/2 replicas")]}),
         "Progressing", "1/2 replicas"),
        (mdep({"phase": "Ready", "observedGeneration": 1, "endpoint": "http://m.ml:8000/v1", "conditions": [cond("Ready", "True")]}),
         "Healthy", "Serving at http://m.ml:8000/v1"),
        (mdep({"phase": "Ready", "observedGeneration": 1, "conditions": [cond("Ready", "True"), cond("Drifted", "True", "DriftDetected", "drift share 0.6")]}),
         "Healthy", "drift detected: drift share 0.6"),
        (mdep({"phase": "Degraded", "conditions": [cond("Ready", "True"), cond("Degraded", "True", "AdapterFailed", "adapter b failed to load")]}),
         "Degraded", "adapter b failed to load"),
        (mdep({"phase": "Failed", "conditions": [cond("Ready", "False", "GatesFailed", "evaluation gates of j failed")]}),
         "Degraded", "evaluation gates of j failed"),
        (mdep({"phase": "Ready", "observedGeneration": 1, "conditions": [cond("Ready", "True")]}, generation=3), "Progressing", "generation 3"),
    ],
    ids=["no-status", "waiting", "rolling-out", "ready", "drifted", "degraded", "failed", "stale"],
)
def test_modeldeployment_health(obj, want, says):
    status, message = health("ModelDeployment", obj)
    assert (status, says in message) == (want, True), message


def test_health_conditions_exist_in_the_api():
    """The Lua reads conditions by type: those types are the ones the API documents, and
    `kubectl wait --for=condition=Succeeded ftj/NAME` / `--for=condition=Ready mdep/NAME` rely on them."""
    from kubetune.api import FineTuneJobStatus, ModelDeploymentStatus

    ftj_doc = FineTuneJobStatus.model_fields["conditions"].description or ""
    mdep_doc = ModelDeploymentStatus.model_fields["conditions"].description or ""
    if not ftj_doc:
        import inspect

        from kubetune.api import finetunejob, modeldeployment

        ftj_doc, mdep_doc = inspect.getsource(finetunejob), inspect.getsource(modeldeployment)
    for kind in ("Accepted", "Succeeded", "Failed", "Suspended"):
        assert kind in ftj_doc
    for kind in ("Ready", "Progressing", "Degraded", "Drifted"):
        assert kind in mdep_doc


def test_argocd_cm_patch_carries_both_checks():
    patch = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["metadata"]["name"] == "argocd-cm"
    for kind in ("FineTuneJob", "ModelDeployment"):
        key = f"resource.customizations.health.kubetune.io_{kind}"
        assert patch["data"][key] == (HEALTH / f"kubetune.io_{kind}.lua").read_text()


def test_argocd_cm_patch_is_a_valid_configmap():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    patch = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml").read_text())
    kubernetes_validate.validate(patch, "1.37.0", strict=True)


def _docs(name):
    return [d for d in yaml.safe_load_all((GITOPS / name).read_text()) if d]


def test_argocd_applications_point_at_real_paths_and_valid_values():
    helm = pytest.importorskip("helm_python")
    chart = helm.Chart.load(str(CHART))
    apps = _docs("argocd-application.yaml")
    assert apps and all(a["apiVersion"] == "argoproj.io/v1alpha1" and a["kind"] == "Application" for a in apps)
    for app in apps:
        spec = app["spec"]
        assert spec["project"] and spec["destination"]["namespace"] and spec["destination"]["server"]
        source = spec["source"]
        assert source["repoURL"] and source["targetRevision"]
        assert (REPO / source["path"]).is_dir(), source["path"]
        if "helm" in source:
            chart.validate_schema(source["helm"].get("valuesObject") or {})


def test_flux_helmrelease_references_its_source_and_valid_values():
    helm = pytest.importorskip("helm_python")
    docs = {d["kind"]: d for d in _docs("flux-helmrelease.yaml")}
    assert docs["GitRepository"]["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    release = docs["HelmRelease"]
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    spec = release["spec"]
    chart_spec = spec["chart"]["spec"]
    assert chart_spec["sourceRef"] == {"kind": "GitRepository", "name": docs["GitRepository"]["metadata"]["name"],
                                       "namespace": docs["GitRepository"]["metadata"]["namespace"]}
    assert (REPO / chart_spec["chart"] / "Chart.yaml").is_file()
    assert spec["upgrade"]["crds"] == "CreateReplace", "Flux must upgrade the CRDs that helm upgrade skips"
    helm.Chart.load(str(CHART)).validate_schema(spec.get("values") or {})
