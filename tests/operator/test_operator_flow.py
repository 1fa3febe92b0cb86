"""The real kopf operator against the emulator; the tests play KubeRay and the kubelet.

Everything here is real except the cluster's controllers: kopf watches and patches over
HTTP, children are applied by operator.k8s through the kubernetes client, and RayJob/pod
status is PATCHed by the tests exactly as KubeRay and the kubelet would.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from kubetune.operator.conditions import find_condition
from kubetune.operator.kuberay import SUPPORTED_KUBERAY_VERSIONS
from tests.harness.kuberay_schema import rayjob_errors, upstream_rayjob_errors
from tests.harness.client import image_pull_backoff, oom_killed, unschedulable, wait_for
from tests.operator.helpers import ftj_manifest, status_of, wait_condition, wait_phase
from tests.operator.samples import full_spec, minimal_spec

pytestmark = pytest.mark.usefixtures("operator_running")

WORKER_LABELS = {"kubetune.io/finetunejob": "job", "ray.io/node-type": "worker"}


def _event_reasons(kube_http, namespace, name="job"):
    return [e.get("reason") for e in kube_http.list("events", namespace)
            if (e.get("involvedObject") or {}).get("name") == name]


def _worker_pod_spec(kube_http, namespace, name="job-train"):
    return kube_http.get("rayjobs", namespace, name)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]


def _create(kube_http, namespace, name="job", **kwargs):
    kube_http.create("finetunejobs", namespace, ftj_manifest(name, namespace, **kwargs))
    return wait_for(lambda: kube_http.get("rayjobs", namespace, f"{name}-train"), 15, message="RayJob created")


def test_create_applies_children_that_validate(kube_http, namespace):
    rayjob = _create(kube_http, namespace, spec=full_spec(), labels={"kueue.x-k8s.io/queue-name": "gpu"})
    owner = kube_http.get("finetunejobs", namespace, "job")
    owner_uid = owner["metadata"]["uid"]
    assert not owner["metadata"].get("finalizers")  # deletion never waits for the operator
    # The RayJob goes first (what users wait for); the rest follows right after.
    children = [
        wait_for(lambda plural=plural, name=name: kube_http.get(plural, namespace, name), 10, message=f"{plural} created")
        for plural, name in [("configmaps", "job-config"), ("serviceaccounts", "job-trainer"),
                             ("roles", "job-status-writer"), ("rolebindings", "job-status-writer")]
    ]
    for child in children:
        assert child is not None
        assert child["metadata"]["ownerReferences"][0]["uid"] == owner_uid
        kubernetes_validate.validate(child, "1.37.0", strict=True)
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    for version in SUPPORTED_KUBERAY_VERSIONS:
        assert rayjob_errors(rayjob, version) == [], version
    assert upstream_rayjob_errors(rayjob) in (None, [])  # KubeRay's full CRD, where it sits beside us
    status = wait_phase(kube_http, namespace, "job", "Pending")
    assert find_condition(status["conditions"], "Accepted")["status"] == "True"
    assert status["rayJobName"] == "job-train"
    wait_for(lambda: "Created" in {e.get("reason") for e in kube_http.list("events", namespace)}, 10, message="Created event")


def test_rayjob_status_drives_phases(kube_http, kuberay, namespace):
    _create(kube_http, namespace)
    kuberay.initializing("job-train")
    kuberay.pod("job-worker-0", WORKER_LABELS, unschedulable("0/2 nodes are available: 2 Insufficient nvidia.com/gpu."))
    cond = wait_condition(kube_http, namespace, "job", "Running", "False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert status_of(kube_http, namespace, "job")["phase"] == "Provisioning"
    kuberay.pod("job-worker-0", WORKER_LABELS, {"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True", "reason": "", "message": ""}]})
    kuberay.running("job-train")
    status = wait_phase(kube_http, namespace, "job", "Training")
    assert status["startTime"] and status["attempts"] == 1
    kuberay.complete("job-train")
    status = wait_phase(kube_http, namespace, "job", "Succeeded")
    assert status["completionTime"]
    assert find_condition(status["conditions"], "Succeeded")["status"] == "True"
    wait_for(lambda: {"Provisioning", "Training", "Succeeded"} <= {e.get("reason") for e in kube_http.list("events", namespace)},
             10, message="an Event per transition")
    (succeeded,) = [e for e in kube_http.list("events", namespace) if e["reason"] == "Succeeded"]
    assert succeeded["involvedObject"]["kind"] == "FineTuneJob" and succeeded["involvedObject"]["name"] == "job"
    kubernetes_validate.validate(succeeded, "1.37.0", strict=True)
    from prometheus_client import REGISTRY  # the in-process operator exports here

    assert REGISTRY.get_sample_value("kubetune_finetunejobs", {"phase": "Succeeded"}) >= 1
    assert REGISTRY.get_sample_value("kubetune_finetunejob_duration_seconds_count") >= 1


@pytest.mark.parametrize(("pod_status", "reason"), [(image_pull_backoff(), "ImagePullBackOff"), (oom_killed(), "OOMKilled")])
def test_failure_causes_are_copied(kube_http, kuberay, namespace, pod_status, reason):
    _create(kube_http, namespace)
    kuberay.initializing("job-train")
    kuberay.pod("job-worker-0", WORKER_LABELS, pod_status)
    wait_condition(kube_http, namespace, "job", "Running", "False", reason)
    kuberay.failed("job-train", reason="AppFailed", message="job failed", failed=3)
    status = wait_phase(kube_http, namespace, "job", "Failed")
    assert status["failure"]["reason"] == reason


def test_suspend_and_resume_keep_the_rayjob_and_config(kube_http, kuberay, namespace):
    rayjob = _create(kube_http, namespace)
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    config_before = kube_http.get("configmaps", namespace, "job-config")
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"suspend": True}})
    wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train")["spec"]["suspend"] is True, 10, message="RayJob suspended")
    kuberay.suspended("job-train")
    status = wait_phase(kube_http, namespace, "job", "Suspended")
    assert find_condition(status["conditions"], "Suspended")["status"] == "True"
    wait_for(lambda: "Suspended" in _event_reasons(kube_http, namespace), 10, message="Suspended event")
    # Placement may change while suspended (as Kueue does): it reaches the pods of the resumed job.
    placement = {"nodeSelector": {"pool": "spot-a100"},
                 "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]}
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"resources": placement}})
    wait_for(lambda: _worker_pod_spec(kube_http, namespace).get("nodeSelector") == placement["nodeSelector"], 10,
             message="new nodeSelector on the suspended RayJob's workers")
    assert _worker_pod_spec(kube_http, namespace)["tolerations"] == placement["tolerations"]
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"suspend": False}})
    wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train")["spec"]["suspend"] is False, 10, message="RayJob resumed")
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    assert kube_http.get("rayjobs", namespace, "job-train")["metadata"]["uid"] == rayjob["metadata"]["uid"]
    config_after = yaml.safe_load(kube_http.get("configmaps", namespace, "job-config")["data"]["finetunejob.yaml"])
    config_before = yaml.safe_load(config_before["data"]["finetunejob.yaml"])
    assert config_after["spec"].pop("resources")["nodeSelector"] == placement["nodeSelector"]
    config_before["spec"].pop("resources")
    assert config_after == config_before  # the rest of the accepted spec is what training resumes with
    assert _worker_pod_spec(kube_http, namespace)["nodeSelector"] == placement["nodeSelector"]
    assert find_condition(status_of(kube_http, namespace, "job").get("conditions"), "UpdateRejected") is None

    # Once running again, placement is fixed: a change is reported and not applied.
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"resources": {"nodeSelector": {"pool": "other"}}}})
    cond = wait_condition(kube_http, namespace, "job", "UpdateRejected", "True", "ImmutableFieldChanged")
    assert "nodeSelector" in cond["message"]
    assert _worker_pod_spec(kube_http, namespace)["nodeSelector"] == placement["nodeSelector"]


def test_retries_then_backoff_limit(kube_http, kuberay, namespace):
    _create(kube_http, namespace, spec={**minimal_spec(), "backoffLimit": 1})
    assert kube_http.get("rayjobs", namespace, "job-train")["spec"]["backoffLimit"] == 1
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    kuberay.retrying("job-train", failed=1)
    cond = wait_condition(kube_http, namespace, "job", "Running", "False", "Retrying")
    assert "attempt 2 of 2" in cond["message"]
    assert status_of(kube_http, namespace, "job")["attempts"] == 2
    kuberay.failed("job-train", message="exit code 1", failed=2)
    status = wait_phase(kube_http, namespace, "job", "Failed")
    assert status["failure"]["reason"] == "BackoffLimitExceeded"
    event = wait_for(lambda: next((e for e in kube_http.list("events", namespace)
                                   if e.get("reason") == "BackoffLimitExceeded"), None), 10, message="failure Event")
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "job"


def test_deadline_is_passed_through_and_reported(kube_http, kuberay, namespace):
    _create(kube_http, namespace)
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"activeDeadlineSeconds": 60}})
    wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train")["spec"].get("activeDeadlineSeconds") == 60, 10,
             message="deadline on the RayJob")
    kuberay.failed("job-train", reason="DeadlineExceeded", message="RayJob exceeded activeDeadlineSeconds 60")
    status = wait_phase(kube_http, namespace, "job", "Failed")
    assert status["failure"] == {"reason": "DeadlineExceeded", "message": "RayJob exceeded activeDeadlineSeconds 60"}


def test_immutable_change_after_start_is_rejected_with_a_condition(kube_http, kuberay, namespace):
    rayjob = _create(kube_http, namespace)
    kuberay.initializing("job-train")
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"hyperparameters": {"learningRate": 0.1}, "backoffLimit": 5}})
    cond = wait_condition(kube_http, namespace, "job", "UpdateRejected", "True", "ImmutableFieldChanged")
    assert "spec.hyperparameters" in cond["message"]
    config = kube_http.get("configmaps", namespace, "job-config")["data"]["finetunejob.yaml"]
    assert yaml.safe_load(config)["spec"]["hyperparameters"]["learningRate"] != 0.1  # not applied
    after = kube_http.get("rayjobs", namespace, "job-train")
    assert after["spec"]["backoffLimit"] == 5  # the mutable part is applied
    assert after["spec"]["rayClusterSpec"] == rayjob["spec"]["rayClusterSpec"]


def test_bad_spec_gets_every_error_and_no_children(kube_http, namespace):
    spec = minimal_spec()
    spec["method"] = {"type": "qlora"}  # needs 4-bit quantization
    spec["datasets"][0]["format"] = "csv"  # not a format
    spec["hyperparameters"]["learningRate"] = 5  # > 1
    kube_http.create("finetunejobs", namespace, ftj_manifest("bad", namespace, spec=spec))
    cond = wait_condition(kube_http, namespace, "bad", "Accepted", "False", "InvalidSpec")
    assert "spec.datasets[0].format" in cond["message"] and "spec.hyperparameters.learningRate" in cond["message"]
    status = status_of(kube_http, namespace, "bad")
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "InvalidSpec"
    assert kube_http.get("rayjobs", namespace, "bad-train") is None
    assert kube_http.get("configmaps", namespace, "bad-config") is None
    # Cross-field rules judge a spec whose fields are valid: fixed fields bring the qlora rule up.
    kube_http.patch("finetunejobs", namespace, "bad", {"spec": {
        "datasets": [{**spec["datasets"][0], "format": "chat"}], "hyperparameters": {"learningRate": 0.0002}}})
    cond = wait_for(lambda: (c := find_condition(status_of(kube_http, namespace, "bad").get("conditions"), "Accepted"))
                    and "quantization" in c["message"] and c, 10, message="the qlora rule reported")
    assert cond["status"] == "False" and "spec.baseModel.quantization" in cond["message"]
    assert "format" not in cond["message"]
    assert kube_http.get("rayjobs", namespace, "bad-train") is None


def test_delete_removes_children_through_owner_references(kube_http, namespace):
    _create(kube_http, namespace)
    wait_phase(kube_http, namespace, "job", "Pending")
    kube_http.delete("finetunejobs", namespace, "job")
    wait_for(lambda: kube_http.get("finetunejobs", namespace, "job") is None, 10, message="FineTuneJob gone")
    for plural, name in [("rayjobs", "job-train"), ("configmaps", "job-config"), ("serviceaccounts", "job-trainer"),
                         ("roles", "job-status-writer"), ("rolebindings", "job-status-writer")]:
        assert kube_http.get(plural, namespace, name) is None, plural


def test_injected_500_and_409_are_retried_without_duplicates(k8s_emulator, kube_http, namespace):
    k8s_emulator.fail_next("POST", rf"/namespaces/{namespace}/rayjobs$", 500)
    k8s_emulator.fail_next("PATCH", rf"/namespaces/{namespace}/finetunejobs/flaky/status$", 409)
    kube_http.create("finetunejobs", namespace, ftj_manifest("flaky", namespace))
    wait_for(lambda: kube_http.get("rayjobs", namespace, "flaky-train"), 20, message="RayJob after a 500")
    wait_phase(kube_http, namespace, "flaky", "Pending", timeout=20)
    log = k8s_emulator.requests()
    assert any(m == "POST" and p.endswith(f"{namespace}/rayjobs") and s == 500 for m, p, s in log)
    assert any(m == "PATCH" and p.endswith("flaky/status") and s == 409 for m, p, s in log)
    assert len(kube_http.list("rayjobs", namespace)) == 1


def test_a_create_whose_answer_was_lost_is_not_duplicated(k8s_emulator, kube_http, namespace):
    """The API server stored the RayJob but answered 500: the retry meets 409 and adopts it."""
    from prometheus_client import REGISTRY

    def errors() -> float:
        return REGISTRY.get_sample_value("kubetune_reconcile_errors_total", {"kind": "FineTuneJob"}) or 0.0

    before = errors()
    k8s_emulator.fail_next("POST", rf"/namespaces/{namespace}/rayjobs$", 500, after_write=True)
    kube_http.create("finetunejobs", namespace, ftj_manifest("lost", namespace))
    status = wait_phase(kube_http, namespace, "lost", "Pending", timeout=20)
    assert find_condition(status["conditions"], "Accepted")["status"] == "True"
    posts = [s for m, p, s in k8s_emulator.requests() if m == "POST" and p.endswith(f"{namespace}/rayjobs")]
    assert posts[:2] == [500, 409]
    assert len(kube_http.list("rayjobs", namespace)) == 1
    assert errors() >= before + 1  # the failed attempt is counted (kubetune_reconcile_errors_total)


def test_a_job_promoting_into_a_deployment_hands_its_max_lora_rank_to_the_trainer(kube_http, namespace):
    kube_http.create("modeldeployments", namespace, {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "support", "namespace": namespace},
        "spec": {"model": {"uri": "pvc://models/base"}, "resources": {"gpus": 0}, "engine": {"maxLoraRank": 8}},
    })
    _create(kube_http, namespace, name="promoting", spec={**minimal_spec(), "deployTo": {"name": "support"}})
    config = wait_for(lambda: kube_http.get("configmaps", namespace, "promoting-config"), 10, message="ConfigMap")
    manifest = yaml.safe_load(config["data"]["finetunejob.yaml"])
    assert manifest["metadata"]["annotations"] == {"kubetune.io/max-lora-rank": "8"}
    from kubetune.api import parse_finetunejob
    from kubetune.trainer import pipeline
    from kubetune.trainer.errors import TrainerConfigError

    with pytest.raises(TrainerConfigError, match="rank: 16 is above the max LoRA rank 8 of ModelDeployment support"):
        pipeline.check_lora_rank(parse_finetunejob(manifest))  # what the pod's `kubetune train --config` does first


def test_dropped_watches_are_resumed(k8s_emulator, kube_http, kuberay, namespace):
    """Both kinds of stream: kopf's (FineTuneJobs) and the operator's own (children)."""
    assert k8s_emulator.drop_watches() > 0
    _create(kube_http, namespace, name="after-drop")
    wait_phase(kube_http, namespace, "after-drop", "Pending")
    assert k8s_emulator.drop_watches() > 0
    kuberay.running("after-drop-train")
    wait_phase(kube_http, namespace, "after-drop", "Training", timeout=10)


def test_deleted_child_is_recreated_by_the_resync(kube_http, namespace):
    rayjob = _create(kube_http, namespace)
    wait_phase(kube_http, namespace, "job", "Pending")
    kube_http.delete("rayjobs", namespace, "job-train")
    again = wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train"), 15, message="RayJob recreated")
    assert again["metadata"]["uid"] != rayjob["metadata"]["uid"]


def test_resync_recovers_a_lost_status_update(k8s_emulator, kube_http, kuberay, namespace):
    """The event-driven status write fails (injected 500, event handlers are not retried);
    the periodic level-based resync writes it anyway."""
    _create(kube_http, namespace)
    wait_phase(kube_http, namespace, "job", "Pending")
    k8s_emulator.fail_next("PATCH", rf"/namespaces/{namespace}/finetunejobs/job/status$", 500)
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training", timeout=20)
    assert any(m == "PATCH" and p.endswith(f"{namespace}/finetunejobs/job/status") and s == 500
               for m, p, s in k8s_emulator.requests())


def test_invalid_edit_after_start_keeps_training_on_the_accepted_spec(kube_http, kuberay, namespace):
    _create(kube_http, namespace)
    kuberay.initializing("job-train")
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"method": {"type": "nope"}}})
    cond = wait_condition(kube_http, namespace, "job", "UpdateRejected", "True", "InvalidSpec")
    assert "spec.method.type" in cond["message"]
    status = status_of(kube_http, namespace, "job")
    assert status["phase"] == "Training" and "failure" not in status
    assert kube_http.get("rayjobs", namespace, "job-train") is not None


def test_status_is_not_rewritten_when_nothing_changed(k8s_emulator, kube_http, kuberay, namespace):
    _create(kube_http, namespace)
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    path = f"/apis/kubetune.io/v1alpha1/namespaces/{namespace}/finetunejobs/job"

    def count(method: str, suffix: str = "") -> int:
        return sum(1 for m, p, _ in k8s_emulator.requests() if m == method and p == path + suffix)

    patches, reads = count("PATCH", "/status"), count("GET")
    wait_for(lambda: count("GET") >= reads + 2, 15, message="two resync passes re-reading the job")
    assert count("PATCH", "/status") == patches


def test_kueue_owns_suspend_of_a_queued_rayjob(kube_http, kuberay, namespace):
    """Created suspended for Kueue to admit; re-applies never flip `suspend` either way."""
    rayjob = _create(kube_http, namespace, labels={"kueue.x-k8s.io/queue-name": "gpu"})
    assert rayjob["spec"]["suspend"] is True
    kuberay.suspended("job-train")
    wait_phase(kube_http, namespace, "job", "Queued")
    wait_for(lambda: "Queued" in _event_reasons(kube_http, namespace), 10, message="Queued event")

    def edit_deadline(seconds: int) -> dict:
        """A mutable edit; returns the RayJob's spec once the operator has re-applied it."""
        kube_http.patch("finetunejobs", namespace, "job", {"spec": {"activeDeadlineSeconds": seconds}})
        wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train")["spec"].get("activeDeadlineSeconds")
                 == seconds, 10, message="deadline applied")
        return kube_http.get("rayjobs", namespace, "job-train")["spec"]

    # A mutable edit before admission re-applies the RayJob: it must stay suspended.
    assert edit_deadline(60)["suspend"] is True
    # Kueue admits (unsuspends); a later edit must not suspend it again.
    kube_http.patch("rayjobs", namespace, "job-train", {"spec": {"suspend": False}})
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    assert edit_deadline(120)["suspend"] is False
    # The user's own suspend still goes through.
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"suspend": True}})
    wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train")["spec"]["suspend"] is True, 10, message="suspended")


def test_name_too_long_for_a_label_is_rejected_without_children(kube_http, namespace):
    name = "n" * 64
    kube_http.create("finetunejobs", namespace, ftj_manifest(name, namespace))
    cond = wait_condition(kube_http, namespace, name, "Accepted", "False", "InvalidSpec")
    assert "metadata.name" in cond["message"] and "63" in cond["message"]
    assert status_of(kube_http, namespace, name)["phase"] == "Failed"
    assert not [c for c in kube_http.list("configmaps", namespace) if c["metadata"]["name"].startswith("nnnn")]
    assert not kube_http.list("rayjobs", namespace)


def test_trainer_reports_through_its_sink_and_the_operator_keeps_them(kube_http, kube_client, kuberay, namespace):
    """The real in-pod status sink writes dataset, phase, artifact and evaluation; later operator writes keep them."""
    from kubetune.status_writer import FineTuneJobStatusSink

    _create(kube_http, namespace)
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    sink = FineTuneJobStatusSink(namespace, "job", api_client=kube_client, min_interval=0)
    dataset = {"rowsIn": 120, "train": 100, "validation": 10, "dropped": {"duplicateExact": 8, "tooLong": 2},
               "redactedRows": 3, "redactions": {"EMAIL": 3},
               "sources": [{"name": "support", "rowsRead": 120, "rowsUsed": 110, "badRows": 0}]}
    sink.on_result({"dataset": dataset})
    sink.on_progress({"step": 20, "totalSteps": 20, "loss": 0.5})
    sink.on_phase("Evaluating")
    artifact = {"uri": "pvc://models/support-lora", "kind": "adapter", "digest": "sha256:" + "0" * 64}
    evaluation = {"metrics": {"evalLoss": 0.9}, "passed": True}
    sink.on_result({"artifact": artifact, "evaluation": evaluation})
    sink.close()
    # A RayJob event while the trainer evaluates: the operator must not reset the phase.
    kuberay.pod("job-worker-0", WORKER_LABELS, {"phase": "Running"})
    kuberay.running("job-train")
    wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train")["status"]["jobStatus"] == "RUNNING", 5)
    assert wait_phase(kube_http, namespace, "job", "Evaluating")["artifact"] == artifact
    kuberay.complete("job-train")
    status = wait_phase(kube_http, namespace, "job", "Succeeded")
    assert status["artifact"] == artifact and status["evaluation"] == evaluation
    assert status["progress"]["step"] == 20
    assert status["dataset"] == dataset


def test_refused_child_update_is_reported_and_training_goes_on(k8s_emulator, kube_http, kuberay, namespace):
    """A 422 on re-applying an existing RayJob (e.g. a webhook) is an UpdateRejected condition, not a failure."""
    _create(kube_http, namespace)
    kuberay.running("job-train")
    wait_phase(kube_http, namespace, "job", "Training")
    k8s_emulator.fail_next("PATCH", rf"/namespaces/{namespace}/rayjobs/job-train$", 422)
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"activeDeadlineSeconds": 90}})
    cond = wait_condition(kube_http, namespace, "job", "UpdateRejected", "True", "ChildUpdateRejected")
    assert "keeps its previous spec" in cond["message"]
    status = status_of(kube_http, namespace, "job")
    assert status["phase"] == "Training" and find_condition(status["conditions"], "Failed")["status"] == "False"
    # The next edit goes through and clears the condition.
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"activeDeadlineSeconds": 120}})
    wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train")["spec"].get("activeDeadlineSeconds") == 120, 10,
             message="deadline applied")
    wait_for(lambda: find_condition(status_of(kube_http, namespace, "job")["conditions"], "UpdateRejected") is None, 10,
             message="UpdateRejected cleared")


def test_refused_child_create_fails_the_job_with_the_servers_message(k8s_emulator, kube_http, namespace):
    k8s_emulator.fail_next("POST", rf"/namespaces/{namespace}/rayjobs$", 422)
    kube_http.create("finetunejobs", namespace, ftj_manifest("refused", namespace))
    cond = wait_condition(kube_http, namespace, "refused", "Accepted", "False", "ChildRejected")
    assert "rejected a child" in cond["message"]
    assert status_of(kube_http, namespace, "refused")["phase"] == "Failed"


def test_engine_job_template_is_never_patched_while_running(kube_http, namespace):
    """A batch Job's pod template is immutable: edits patch only the mutable fields."""
    spec = {**minimal_spec(), "engine": "Job", "resources": {"workers": 1, "gpusPerWorker": 0}}
    kube_http.create("finetunejobs", namespace, ftj_manifest("single", namespace, spec=spec))
    job = wait_for(lambda: kube_http.get("jobs", namespace, "single-train"), 15, message="batch Job")
    # As if an older operator had rendered it: a real API server would refuse to change it.
    old_template = job["spec"]["template"]
    old_template["spec"]["containers"][0]["image"] = "registry.example/trainer:older"
    kube_http.patch("jobs", namespace, "single-train", {"spec": {"template": old_template}})
    kube_http.patch("finetunejobs", namespace, "single", {"spec": {"activeDeadlineSeconds": 300}})
    wait_for(lambda: kube_http.get("jobs", namespace, "single-train")["spec"].get("activeDeadlineSeconds") == 300, 10,
             message="deadline applied")
    after = kube_http.get("jobs", namespace, "single-train")
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/trainer:older"


def test_workload_create_only_fields():
    from kubetune.api import FineTuneJobSpec
    from kubetune.operator.handlers_finetunejob import workload_create_only

    def paths(labels=None, **spec):
        body = {"metadata": {"name": "j", "namespace": "ns", "labels": labels or {}}}
        return workload_create_only(body, FineTuneJobSpec.model_validate({**minimal_spec(), **spec}))

    assert paths() == ()
    assert paths({"kueue.x-k8s.io/queue-name": "q"}) == (("spec", "suspend"),)
    assert paths({"kueue.x-k8s.io/queue-name": "q"}, suspend=True) == ()
    assert paths(engine="Job", resources={"workers": 1}) == (("spec", "template"),)
    assert paths(engine="Job", resources={"workers": 1}, suspend=True) == ()
