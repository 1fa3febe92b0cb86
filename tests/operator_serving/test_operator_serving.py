"""The ModelDeployment operator end to end on the emulator: real kopf, real HTTP, fake engines.

Mocks: no Deployment controller or kubelet exists in the emulator, so the tests PATCH the
Deployment's and pods' status as those would; vLLM cannot run as a pod here, so pods point at
the fake vLLM server from conftest (its runtime LoRA API only). Everything else is real:
kopf's watch/handler cycle, the operator's API client, its HTTP calls to the engine.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.harness.crd_models import model_errors
from tests.harness.client import wait_for

from .conftest import dump

_ns = itertools.count()


@pytest.fixture
def ns(operator) -> str:
    """A fresh namespace per test: the operator's indexes are per namespace, so tests never mix."""
    return f"serving-{next(_ns)}"


def finetunejob(name: str, *, deploy_to: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "pvc://models/llama-3-8b"},
        "datasets": [{"name": "d", "uri": "pvc://data/train.jsonl"}],
        "output": {"uri": f"pvc://artifacts/{name}"},
    }
    if deploy_to:
        spec["deployTo"] = {"name": deploy_to}
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def succeeded(name: str, *, passed: bool = True, kind: str = "adapter", digest: str = "sha256:aa") -> dict[str, Any]:
    gate = {"metric": "evalLoss", "operator": "<=", "threshold": 2.0, "value": 1.5 if passed else 2.7, "passed": passed}
    return {
        "phase": "Succeeded",
        "completionTime": "2026-01-01T00:00:00Z",
        "artifact": {"uri": f"pvc://artifacts/{name}", "kind": kind, "digest": digest},
        "evaluation": {"metrics": {"evalLoss": gate["value"]}, "gates": [gate], "passed": passed},
    }


def modeldeployment(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def md_status(http, ns: str, name: str) -> dict[str, Any]:
    return (http.get("modeldeployments", ns, name) or {}).get("status") or {}


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def make_ready(http, ns: str, deployment: str, replicas: int = 1) -> None:
    """Play the Deployment controller: all replicas updated, ready and available."""
    http.patch_status("deployments", ns, deployment, {
        "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
    })


def running_pod(http, ns: str, md: str, pod: str) -> None:
    """Play the kubelet: a pod of the deployment, Running and Ready, at the fake engine's address."""
    labels = {"app.kubernetes.io/name": "kubetune-serving", "app.kubernetes.io/instance": md,
              "kubetune.io/modeldeployment": md}
    http.create("pods", ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": labels},
                             "spec": {"containers": [{"name": "vllm", "image": "vllm"}]}})
    http.patch_status("pods", ns, pod, {"phase": "Running", "podIP": "127.0.0.1",
                                        "conditions": [{"type": "Ready", "status": "True"}]})


def pod_state(status: dict[str, Any], adapter: str, pod: str) -> str | None:
    for entry in status.get("adapters") or []:
        if entry["name"] == adapter:
            for p in entry.get("pods") or []:
                if p["pod"] == pod:
                    return p["state"]
    return None


# ----------------------------------------------------------------------------- promotion gates


def test_gates_passed_deploys_and_readiness_makes_it_ready(http, ns, kubectl):
    http.create("finetunejobs", ns, finetunejob("ft-ok"))
    http.patch_status("finetunejobs", ns, "ft-ok", succeeded("ft-ok"))
    manifest = modeldeployment("chat", {"model": {"fineTuneJobRef": {"name": "ft-ok"}}})
    kubectl("apply", "--validate=false", "-n", ns, "-f", "-", input=json.dumps(manifest))

    deploy = wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 15, message="the vLLM Deployment")
    service = wait_for(lambda: http.get("services", ns, "chat"), 5, message="the Service")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/mnt/pvc/models/llama-3-8b"
    assert args[args.index("--lora-modules") + 1] == "chat=/mnt/pvc/artifacts/ft-ok/adapter"
    assert deploy["metadata"]["ownerReferences"][0]["name"] == "chat"
    assert [p["port"] for p in service["spec"]["ports"]] == [8080]
    assert http.get("configmaps", ns, "chat-gateway") is not None
    status = wait_for(lambda: md_status(http, ns, "chat").get("phase") == "Deploying" and md_status(http, ns, "chat"), 10)
    assert cond(status, "Ready")["status"] == "False"

    make_ready(http, ns, "chat-vllm")
    status = wait_for(lambda: (s := md_status(http, ns, "chat")).get("phase") == "Ready" and s, 10,
                      message="phase Ready")
    assert cond(status, "Ready") | {} and cond(status, "Ready")["status"] == "True"
    assert cond(status, "Degraded")["status"] == "False"
    assert status["endpoint"] == f"http://chat.{ns}.svc:8080/v1"
    assert status["servedModels"] == ["chat-base", "chat"]
    assert status["readyReplicas"] == 1
    assert status["modelUri"] == "pvc://artifacts/ft-ok/adapter"
    # kopf's timer needs a finalizer (docs/deploying-models.md, troubleshooting)
    assert "kubetune.io/finalizer" in http.get("modeldeployments", ns, "chat")["metadata"]["finalizers"]
    # The gauge follows the status write's answer, which may come after the test saw Ready.
    assert wait_for(lambda: (REGISTRY.get_sample_value("kubetune_modeldeployments", {"phase": "Ready"}) or 0) >= 1, 10,
                    message="Ready gauge")
    table = kubectl("get", "mdep", "chat", "-n", ns)
    assert "Ready" in table.splitlines()[1], table


def test_optional_children_follow_the_spec(http, ns, cluster):
    http.create("modeldeployments", ns, modeldeployment("chat", {
        "model": {"uri": "pvc://models/base"}, "autoscaling": {"enabled": True, "maxReplicas": 3}}))
    hpa = wait_for(lambda: http.get("horizontalpodautoscalers", ns, "chat"), 15, message="the HPA")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    wait_for(lambda: http.get("poddisruptionbudgets", ns, "chat"), 10, message="the PDB")
    monitor = wait_for(lambda: cluster.get("podmonitors", ns, "chat"), 5, message="the PodMonitor")
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"http", "vllm"}
    assert model_errors(monitor) == []  # the emulator stores anything; the typed model checks it
    assert "replicas" not in http.get("deployments", ns, "chat-vllm")["spec"]

    http.patch("modeldeployments", ns, "chat", {"spec": {"autoscaling": {"enabled": False}, "replicas": 1}})
    wait_for(lambda: http.get("horizontalpodautoscalers", ns, "chat") is None, 10, message="HPA deleted")
    wait_for(lambda: http.get("poddisruptionbudgets", ns, "chat") is None, 10, message="PDB deleted")
    assert http.get("deployments", ns, "chat-vllm")["spec"]["replicas"] == 1


def test_status_writes_keep_other_conditions_and_survive_a_conflict(http, ns, cluster):
    """Monitoring writes its own conditions into the same list; a 409 makes us retry, not give up."""
    http.create("modeldeployments", ns, modeldeployment("chat", {"model": {"uri": "pvc://models/base"}}))
    wait_for(lambda: md_status(http, ns, "chat").get("phase"), 15, message="a first status")
    drifted = {"type": "Drifted", "status": "True", "reason": "DriftDetected", "message": "drift share 0.7",
               "lastTransitionTime": "2026-01-01T00:00:00Z"}
    conditions = md_status(http, ns, "chat")["conditions"] + [drifted]
    http.patch_status("modeldeployments", ns, "chat", {"conditions": conditions})
    wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 10)
    status_path = f"/namespaces/{ns}/modeldeployments/chat/status"
    cluster.fail_next("PATCH", status_path + "$", 409)  # the operator's next status write
    make_ready(http, ns, "chat-vllm")
    status = wait_for(lambda: (s := md_status(http, ns, "chat")).get("phase") == "Ready" and s, 10, message="Ready")
    assert any(m == "PATCH" and p.endswith(status_path) and code == 409 for m, p, code in cluster.requests())
    assert cond(status, "Drifted") == drifted


def test_failed_gates_do_not_deploy_and_say_which(http, ns):
    http.create("finetunejobs", ns, finetunejob("ft-bad"))
    http.patch_status("finetunejobs", ns, "ft-bad", succeeded("ft-bad", passed=False))
    http.create("modeldeployments", ns, modeldeployment("chat", {"model": {"fineTuneJobRef": {"name": "ft-bad"}}}))

    status = wait_for(lambda: cond(md_status(http, ns, "chat"), "Ready").get("reason") == "GatesNotPassed"
                      and md_status(http, ns, "chat"), 15, message="GatesNotPassed")
    ready = cond(status, "Ready")
    assert ready["status"] == "False"
    assert "evalLoss=2.7 (needs <= 2)" in ready["message"]
    assert http.get("deployments", ns, "chat-vllm") is None
    assert http.get("services", ns, "chat") is None


def test_invalid_engine_args_name_the_field_and_create_nothing(http, ns):
    http.create("modeldeployments", ns, modeldeployment("chat", {
        "model": {"uri": "pvc://models/base"}, "engine": {"extraArgs": ["--enforce-eager", "--port=9000"]}}))
    status = wait_for(lambda: (s := md_status(http, ns, "chat")) and cond(s, "Ready").get("reason") == "InvalidSpec" and s,
                      15, message="InvalidSpec")
    assert "spec.engine.extraArgs[1]" in cond(status, "Ready")["message"] and status["phase"] == "Failed"
    assert http.get("deployments", ns, "chat-vllm") is None


def test_missing_job_then_training_then_promoted_when_it_succeeds(http, ns):
    http.create("modeldeployments", ns, modeldeployment("chat", {"model": {"fineTuneJobRef": {"name": "ft-later"}}}))
    status = wait_for(lambda: cond(md_status(http, ns, "chat"), "Ready").get("reason") == "FineTuneJobNotFound"
                      and md_status(http, ns, "chat"), 15, message="FineTuneJobNotFound")
    assert "'ft-later'" in cond(status, "Ready")["message"] and ns in cond(status, "Ready")["message"]

    http.create("finetunejobs", ns, finetunejob("ft-later"))
    http.patch_status("finetunejobs", ns, "ft-later", {"phase": "Training"})
    status = wait_for(lambda: cond(md_status(http, ns, "chat"), "Ready").get("reason") == "WaitingForTraining"
                      and md_status(http, ns, "chat"), 10, message="WaitingForTraining")
    assert "Training" in cond(status, "Ready")["message"] and status["phase"] == "WaitingForTraining"
    assert http.get("deployments", ns, "chat-vllm") is None

    http.patch_status("finetunejobs", ns, "ft-later", succeeded("ft-later"))
    wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 10, message="deployment after the job succeeded")


def test_a_new_job_that_is_not_ready_leaves_the_old_model_serving(http, ns):
    http.create("finetunejobs", ns, finetunejob("ft-a"))
    http.patch_status("finetunejobs", ns, "ft-a", succeeded("ft-a", kind="merged"))
    http.create("modeldeployments", ns, modeldeployment("chat", {"model": {"fineTuneJobRef": {"name": "ft-a"}}}))
    wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 15)
    make_ready(http, ns, "chat-vllm")
    wait_for(lambda: md_status(http, ns, "chat").get("phase") == "Ready", 10)

    http.create("finetunejobs", ns, finetunejob("ft-b"))
    http.patch_status("finetunejobs", ns, "ft-b", succeeded("ft-b", kind="merged", passed=False))
    http.patch("modeldeployments", ns, "chat", {"spec": {"model": {"fineTuneJobRef": {"name": "ft-b"}}}})
    status = wait_for(lambda: (s := md_status(http, ns, "chat")) and cond(s, "Progressing").get("reason") == "GatesNotPassed"
                      and s, 10, message="GatesNotPassed while serving")
    assert status["phase"] == "Ready" and cond(status, "Ready")["status"] == "True"
    assert "still serving pvc://artifacts/ft-a/merged" in cond(status, "Progressing")["message"]
    assert "evalLoss=2.7" in cond(status, "Progressing")["message"]
    args = http.get("deployments", ns, "chat-vllm")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "/mnt/pvc/artifacts/ft-a/merged" in args


def test_deploy_to_promotes_a_job_and_rolls_the_base_model(http, ns):
    http.create("modeldeployments", ns, modeldeployment("chat", {"model": {"uri": "pvc://models/old"}}))
    deploy = wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 15)
    old_template = deploy["spec"]["template"]
    assert "/mnt/pvc/models/old" in old_template["spec"]["containers"][0]["args"]

    http.create("finetunejobs", ns, finetunejob("ft-next", deploy_to="chat"))
    http.patch_status("finetunejobs", ns, "ft-next", succeeded("ft-next", kind="merged", digest="sha256:bb"))

    def promoted():
        d = http.get("deployments", ns, "chat-vllm")
        return d if "/mnt/pvc/artifacts/ft-next/merged" in d["spec"]["template"]["spec"]["containers"][0]["args"] else None

    deploy = wait_for(promoted, 10, message="the promoted artifact in the pod template")
    assert deploy["spec"]["template"] != old_template  # a new template: the Deployment rolls
    assert deploy["spec"]["template"]["metadata"]["annotations"]["kubetune.io/model-digest"] == "sha256:bb"
    wait_for(lambda: md_status(http, ns, "chat").get("modelUri") == "pvc://artifacts/ft-next/merged", 10)


# ----------------------------------------------------------------------------- adapters at runtime


def test_adapter_is_loaded_at_runtime_and_again_after_a_pod_restart(http, ns, fake_vllm):
    fake_vllm.restart()
    http.create("modeldeployments", ns, modeldeployment("chat", {
        "model": {"uri": "pvc://models/base"},
        "adapters": [{"name": "tone", "uri": "pvc://artifacts/tone-v1"}],
    }))
    deploy = wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 15)
    template = deploy["spec"]["template"]
    running_pod(http, ns, "chat", "chat-pod-a")

    wait_for(lambda: fake_vllm.loaded().get("tone") == "/mnt/pvc/artifacts/tone-v1", 10, message="load call")
    assert {"lora_name": "tone", "lora_path": "/mnt/pvc/artifacts/tone-v1"} in fake_vllm.calls_to("/v1/load_lora_adapter")
    wait_for(lambda: pod_state(md_status(http, ns, "chat"), "tone", "chat-pod-a") == "Loaded", 10,
             message="Loaded in status")
    # The operator authenticates to the engine with the generated key from the Secret.
    secret = http.get("secrets", ns, "chat-engine-key")
    key = base64.b64decode(secret["data"]["key"]).decode()
    assert len(key) >= 32 and fake_vllm.authorizations[-1] == f"Bearer {key}"
    assert secret["metadata"]["ownerReferences"][0]["name"] == "chat"

    # A second adapter on the same claim: loaded without touching the pod template.
    spec = http.get("modeldeployments", ns, "chat")["spec"]
    spec["adapters"].append({"name": "legal", "uri": "pvc://artifacts/legal-v1"})
    http.patch("modeldeployments", ns, "chat", {"spec": {"adapters": spec["adapters"]}})
    wait_for(lambda: fake_vllm.loaded().get("legal") == "/mnt/pvc/artifacts/legal-v1", 10)
    assert http.get("deployments", ns, "chat-vllm")["spec"]["template"] == template
    status = wait_for(lambda: (s := md_status(http, ns, "chat")) and pod_state(s, "legal", "chat-pod-a") == "Loaded" and s, 10)
    assert {"chat", "tone", "legal"} <= set(status["servedModels"])

    # The engine restarts in a new pod: the operator loads both again.
    fake_vllm.restart()
    http.delete("pods", ns, "chat-pod-a")
    running_pod(http, ns, "chat", "chat-pod-b")
    wait_for(lambda: fake_vllm.loaded() == {"tone": "/mnt/pvc/artifacts/tone-v1", "legal": "/mnt/pvc/artifacts/legal-v1"},
             10, message="adapters re-applied after the restart")
    status = wait_for(lambda: (s := md_status(http, ns, "chat")) and pod_state(s, "tone", "chat-pod-b") == "Loaded" and s, 10)
    assert pod_state(status, "tone", "chat-pod-a") is None
    http.delete("pods", ns, "chat-pod-b")


def test_adapter_that_fails_to_load_degrades_with_the_engine_message(http, ns, fake_vllm):
    fake_vllm.restart()
    fake_vllm.fail_paths.add("/v1/load_lora_adapter")
    try:
        http.create("modeldeployments", ns, modeldeployment("chat", {
            "model": {"uri": "pvc://models/base"}, "adapters": [{"name": "broken", "uri": "pvc://artifacts/nope"}]}))
        wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 15)
        make_ready(http, ns, "chat-vllm")
        running_pod(http, ns, "chat", "chat-pod-x")
        status = wait_for(lambda: (s := md_status(http, ns, "chat")) and cond(s, "Degraded").get("status") == "True" and s,
                          10, message="Degraded")
        assert "No adapter found" in cond(status, "Degraded")["message"]
        assert pod_state(status, "broken", "chat-pod-x") == "Failed"
        assert status["phase"] == "Degraded"
    finally:
        fake_vllm.fail_paths.clear()
        http.delete("pods", ns, "chat-pod-x")


# ----------------------------------------------------------------------------- canary


def _gateway_routes(http, ns: str) -> list[dict[str, Any]]:
    cm = http.get("configmaps", ns, "chat-gateway")
    return json.loads(cm["data"]["canary.json"])["routes"]


def _annotate(kubectl, ns: str, value: str) -> None:
    kubectl("annotate", "-n", ns, "mdep", "chat", f"kubetune.io/canary={value}", "--overwrite")


def _set_adapter(http, ns: str, uri: str) -> None:
    http.patch("modeldeployments", ns, "chat", {"spec": {"adapters": [{"name": "tone", "uri": uri}]}})


def test_canary_promote_and_rollback(http, ns, fake_vllm, kubectl):
    fake_vllm.restart()
    http.create("modeldeployments", ns, modeldeployment("chat", {
        "model": {"uri": "pvc://models/base"},
        "adapters": [{"name": "tone", "uri": "pvc://artifacts/tone-v1"}],
        "rollout": {"strategy": "Canary", "canaryWeight": 25},
    }))
    wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 15)
    make_ready(http, ns, "chat-vllm")
    running_pod(http, ns, "chat", "chat-pod-c")
    wait_for(lambda: fake_vllm.loaded() == {"tone": "/mnt/pvc/artifacts/tone-v1"}, 10, message="first version, no canary")
    assert md_status(http, ns, "chat").get("canary") is None

    # A new version goes to a canary with 25% of the adapter's traffic.
    _set_adapter(http, ns, "pvc://artifacts/tone-v2")
    status = wait_for(lambda: (s := md_status(http, ns, "chat")).get("canary") and s, 10, message="canary status")
    assert status["canary"] == {"adapter": "tone", "weight": 25, "uri": "pvc://artifacts/tone-v2",
                                "previousUri": "pvc://artifacts/tone-v1"}, dump(status)
    wait_for(lambda: fake_vllm.loaded() == {"tone": "/mnt/pvc/artifacts/tone-v1",
                                            "tone-canary": "/mnt/pvc/artifacts/tone-v2"}, 10)
    wait_for(lambda: _gateway_routes(http, ns) == [{"model": "tone", "canary": "tone-canary", "weight": 25}], 10)
    progressing = wait_for(lambda: (c := cond(md_status(http, ns, "chat"), "Progressing")).get("reason") == "Canary" and c, 10)
    assert progressing["status"] == "True" and "25% to pvc://artifacts/tone-v2" in progressing["message"]

    # Promote: v2 serves under the adapter's own name, the canary is gone, the annotation consumed.
    _annotate(kubectl, ns, "promote")
    wait_for(lambda: fake_vllm.loaded() == {"tone": "/mnt/pvc/artifacts/tone-v2"}, 10, message="promoted in the engine")
    status = wait_for(lambda: (s := md_status(http, ns, "chat")) and not s.get("canary")
                      and {a["name"]: a["uri"] for a in s.get("adapters") or []} == {"tone": "pvc://artifacts/tone-v2"} and s,
                      10, message="promoted in status")
    md = http.get("modeldeployments", ns, "chat")
    assert json.loads(md["metadata"]["annotations"]["kubetune.io/adapter-revisions"]) == {
        "tone": {"current": "pvc://artifacts/tone-v2", "previous": "pvc://artifacts/tone-v1"}}
    wait_for(lambda: _gateway_routes(http, ns) == [], 10)
    wait_for(lambda: "kubetune.io/canary" not in http.get("modeldeployments", ns, "chat")["metadata"].get("annotations", {}), 10)

    # v3 canary, then rollback: v2 stays, v3 is refused and not canaried again.
    _set_adapter(http, ns, "pvc://artifacts/tone-v3")
    wait_for(lambda: (md_status(http, ns, "chat").get("canary") or {}).get("uri") == "pvc://artifacts/tone-v3", 10)
    _annotate(kubectl, ns, "rollback")
    wait_for(lambda: fake_vllm.loaded() == {"tone": "/mnt/pvc/artifacts/tone-v2"}, 10, message="canary unloaded")
    status = wait_for(lambda: (s := md_status(http, ns, "chat")) and not s.get("canary") and s, 10)
    assert {a["name"]: a["uri"] for a in status["adapters"]} == {"tone": "pvc://artifacts/tone-v2"}
    md = http.get("modeldeployments", ns, "chat")
    assert json.loads(md["metadata"]["annotations"]["kubetune.io/canary-rolled-back"]) == {"tone": "pvc://artifacts/tone-v3"}
    assert "kubetune.io/canary" not in md["metadata"]["annotations"]
    unloads = fake_vllm.calls_to("/v1/unload_lora_adapter")
    assert {"lora_name": "tone-canary"} in unloads
    # A later reconcile (a pod event forces one) does not start the refused canary again.
    loads_before = len(fake_vllm.calls_to("/v1/load_lora_adapter"))
    listings = fake_vllm.model_listings
    http.patch_status("pods", ns, "chat-pod-c", {"conditions": [{"type": "Ready", "status": "True"},
                                                                {"type": "ContainersReady", "status": "True"}]})
    wait_for(lambda: fake_vllm.model_listings > listings, 10, message="a reconcile after the pod event")
    assert md_status(http, ns, "chat").get("canary") is None
    assert len(fake_vllm.calls_to("/v1/load_lora_adapter")) == loads_before
    http.delete("pods", ns, "chat-pod-c")
