"""The ModelDeployment handlers inside the whole operator (`kubetune.operator.main`), as shipped.

The other operator tests run only the serving handlers (so the FineTuneJob handlers cannot
rewrite the job statuses those tests play). This one runs everything `run_operator` loads,
with its settings, login and shared API client, on the harness's emulator.
"""

from __future__ import annotations

from tests.harness.client import wait_for
from tests.harness.fixtures import k8s_emulator, kube_http, namespace, operator_running  # noqa: F401


def test_the_shipped_operator_deploys_a_model(operator_running, kube_http, namespace):  # noqa: F811
    kube_http.create("modeldeployments", namespace, {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
        "spec": {"model": {"uri": "pvc://models/base"}, "replicas": 2}})
    deploy = wait_for(lambda: kube_http.get("deployments", namespace, "chat-vllm"), 20, message="the Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert kube_http.get("secrets", namespace, "chat-engine-key") is not None  # created before the pods
    wait_for(lambda: kube_http.get("poddisruptionbudgets", namespace, "chat"), 10, message="the PDB")
    kube_http.patch_status("deployments", namespace, "chat-vllm", {
        "observedGeneration": deploy["metadata"]["generation"], "replicas": 2, "updatedReplicas": 2,
        "readyReplicas": 2, "availableReplicas": 2})

    def ready():
        status = (kube_http.get("modeldeployments", namespace, "chat") or {}).get("status") or {}
        return status.get("phase") == "Ready" and status

    status = wait_for(ready, 20, message="phase Ready")
    assert status["endpoint"] == f"http://chat.{namespace}.svc:8080/v1"
    # kopf's bookkeeping stays out of the strict status schema.
    assert set(status) <= {"phase", "conditions", "observedGeneration", "readyReplicas", "endpoint", "servedModels",
                           "modelUri", "adapters", "canary", "lastDeployTime", "monitoring"}
