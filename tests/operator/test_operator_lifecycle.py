"""Operator restarts and clusters without KubeRay: each test runs its own operator(s).

Real kopf and real HTTP against the emulator; KubeRay and the kubelet are played by the
test (status PATCHes), as everywhere in the harness.
"""

from __future__ import annotations

from tests.harness.client import KubeHttp, KubeRaySimulator, wait_for
from tests.harness.operator import OperatorRunner
from tests.harness.server import RunningEmulator, kuberay_crds
from tests.operator.helpers import ftj_manifest, status_of, wait_condition, wait_phase
from tests.operator.samples import minimal_spec


def test_restart_mid_training_recovers_without_duplicates(k8s_emulator, kube_http, kuberay, namespace):
    with OperatorRunner(k8s_emulator.kubeconfig):
        kube_http.create("finetunejobs", namespace, ftj_manifest("job", namespace))
        rayjob = wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train"), 15, message="RayJob")
        kuberay.initializing("job-train")
        kuberay.running("job-train")
        wait_phase(kube_http, namespace, "job", "Training")
    # The operator is down while training finishes.
    kuberay.complete("job-train")
    kube_http.patch_status("finetunejobs", namespace, "job", {"progress": {"step": 20, "totalSteps": 20}})
    assert status_of(kube_http, namespace, "job")["phase"] == "Training"
    with OperatorRunner(k8s_emulator.kubeconfig):
        status = wait_phase(kube_http, namespace, "job", "Succeeded")
    assert status["progress"]["step"] == 20  # the trainer's part of the status is kept
    assert len(kube_http.list("rayjobs", namespace)) == 1
    assert kube_http.get("rayjobs", namespace, "job-train")["metadata"]["uid"] == rayjob["metadata"]["uid"]
    assert len(kube_http.list("configmaps", namespace)) == 1


def test_without_kuberay_rayjob_is_not_accepted_and_job_engine_runs(tmp_path):
    with RunningEmulator(tmp_path, kuberay=False) as cluster, OperatorRunner(cluster.kubeconfig):
        http = KubeHttp(cluster.url)
        http.create("namespaces", None, {"metadata": {"name": "ml"}})
        http.create("finetunejobs", "ml", ftj_manifest("ray", "ml"))
        cond = wait_condition(http, "ml", "ray", "Accepted", "False", "KubeRayNotInstalled")
        assert "helm install kuberay-operator" in cond["message"] and "spec.engine: Job" in cond["message"]
        assert status_of(http, "ml", "ray")["phase"] == "Pending"
        assert http.get("configmaps", "ml", "ray-config") is None

        spec = {**minimal_spec(), "engine": "Job", "resources": {"workers": 1, "gpusPerWorker": 0}}
        http.create("finetunejobs", "ml", ftj_manifest("single", "ml", spec=spec))
        job = wait_for(lambda: http.get("jobs", "ml", "single-train"), 15, message="batch Job")
        assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["kubetune", "train"]
        sim = KubeRaySimulator(http, "ml")
        sim.pod("single-train-abcde", {"kubetune.io/finetunejob": "single"}, {"phase": "Running"})
        http.patch_status("jobs", "ml", "single-train", {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
        wait_phase(http, "ml", "single", "Training")
        http.patch_status("jobs", "ml", "single-train", {"active": 0, "succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True", "reason": "", "message": ""}]})
        wait_phase(http, "ml", "single", "Succeeded")

        # Installing KubeRay later is picked up by the periodic resync: the RayJob appears.
        crds = [crd for crd in kuberay_crds() if crd["spec"]["names"]["kind"] == "RayJob"]
        cluster.call(lambda: [cluster.emulator.register_crd(crd) for crd in crds])
        wait_for(lambda: http.get("rayjobs", "ml", "ray-train"), 20, message="RayJob once KubeRay is installed")
        wait_condition(http, "ml", "ray", "Accepted", "True", "Valid")
        http.close()


def test_operator_wide_labels_reach_every_child_and_its_pods(k8s_emulator, kube_http, namespace):
    """KUBETUNE_EXTRA_LABELS (the chart's operator.childLabels), e.g. for cost reports."""
    with OperatorRunner(k8s_emulator.kubeconfig, extra_labels={"team": "ml-platform", "example.com/cost-centre": "4711"}):
        kube_http.create("finetunejobs", namespace, ftj_manifest("labelled", namespace))
        rayjob = wait_for(lambda: kube_http.get("rayjobs", namespace, "labelled-train"), 15, message="RayJob")
        children = [rayjob] + [
            wait_for(lambda plural=plural, name=name: kube_http.get(plural, namespace, name), 10, message=plural)
            for plural, name in [("configmaps", "labelled-config"), ("serviceaccounts", "labelled-trainer"),
                                 ("roles", "labelled-status-writer"), ("rolebindings", "labelled-status-writer")]
        ]
    cluster = rayjob["spec"]["rayClusterSpec"]
    pod_templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for meta in [c["metadata"] for c in children] + [t["metadata"] for t in pod_templates]:
        assert meta["labels"]["team"] == "ml-platform" and meta["labels"]["example.com/cost-centre"] == "4711"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "kubetune"
    assert pod_templates[-1]["metadata"]["labels"]["kubetune.io/finetunejob"] == "labelled"  # selectors untouched
