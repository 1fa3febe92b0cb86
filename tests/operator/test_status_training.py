"""Pure status derivation: RayJob/Job + pods -> phase, conditions, failure cause."""

from __future__ import annotations

import pytest

from kubetune.operator.conditions import find_condition, set_conditions, status_patch
from kubetune.operator.status_training import Observed, desired_status, pod_cause, rejected_status
from tests.harness.client import image_pull_backoff, oom_killed, unschedulable
from tests.operator.samples import body, minimal_spec

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T01:00:00Z"


def rayjob(**status):
    return {"metadata": {"name": "support-lora-train"}, "status": status}


def pod(status):
    return {"metadata": {"name": "support-lora-train-worker-0"}, "status": status}


def run(sequence, spec=None, now=T1):
    """Apply a sequence of observations, feeding each status back like the API server would."""
    doc = body(spec=spec or minimal_spec())
    statuses = []
    for observed in sequence:
        status = desired_status(doc, observed, now=now)
        doc["status"] = {k: v for k, v in {**(doc.get("status") or {}), **status}.items() if v is not None}
        statuses.append(doc["status"])
    return statuses


def cond(status, type_):
    c = find_condition(status["conditions"], type_)
    return c["status"], c["reason"]


def test_happy_path_phases():
    seq = [
        Observed(workload=None),
        Observed(workload=rayjob()),
        Observed(workload=rayjob(jobDeploymentStatus="Initializing", startTime=T0)),
        Observed(workload=rayjob(jobDeploymentStatus="Running", jobStatus="PENDING", startTime=T0)),
        Observed(workload=rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=T0)),
        Observed(workload=rayjob(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", startTime=T0, endTime=T2, succeeded=1)),
    ]
    statuses = run(seq)
    assert [s["phase"] for s in statuses] == ["Pending", "Pending", "Provisioning", "Provisioning", "Training", "Succeeded"]
    final = statuses[-1]
    assert cond(final, "Succeeded") == ("True", "Completed") and cond(final, "Running") == ("False", "Completed")
    assert cond(final, "Accepted") == ("True", "Valid")
    assert final["startTime"] == T0 and final["completionTime"] == T2 and final["observedGeneration"] == 1
    assert "failure" not in final


def test_trainer_reported_evaluating_is_kept_while_running():
    doc = body()
    doc["status"] = {"phase": "Evaluating"}
    status = desired_status(doc, Observed(workload=rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING")), now=T1)
    assert status["phase"] == "Evaluating"


@pytest.mark.parametrize(
    ("pod_status", "reason", "snippet"),
    [
        (unschedulable("0/3 nodes are available: 3 Insufficient nvidia.com/gpu."), "Unschedulable", "Insufficient nvidia.com/gpu"),
        (image_pull_backoff("registry.example/trainer:nope"), "ImagePullBackOff", "registry.example/trainer:nope"),
        (oom_killed(), "OOMKilled", "memory limit"),
    ],
)
def test_stuck_pods_show_their_cause_while_provisioning(pod_status, reason, snippet):
    (status,) = run([Observed(workload=rayjob(jobDeploymentStatus="Initializing"), pods=[pod(pod_status)])])
    assert status["phase"] == "Provisioning"
    running = find_condition(status["conditions"], "Running")
    assert running["reason"] == reason and snippet in running["message"]


def test_oom_failure_carries_the_real_cause():
    (status,) = run([Observed(workload=rayjob(jobDeploymentStatus="Failed", jobStatus="FAILED", failed=3),
                              pods=[pod(oom_killed())])])
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "OOMKilled"
    assert cond(status, "Failed") == ("True", "OOMKilled")


def test_deadline_exceeded():
    (status,) = run([Observed(workload=rayjob(jobDeploymentStatus="Failed", reason="DeadlineExceeded",
                                              message="activeDeadlineSeconds 60 exceeded"))])
    assert status["failure"] == {"reason": "DeadlineExceeded", "message": "activeDeadlineSeconds 60 exceeded"}


def test_retries_then_backoff_limit_exceeded():
    spec = {**minimal_spec(), "backoffLimit": 2}
    statuses = run([
        Observed(workload=rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING")),
        Observed(workload=rayjob(jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=1)),
        Observed(workload=rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING", failed=1)),
        Observed(workload=rayjob(jobDeploymentStatus="Retrying", failed=2)),
        Observed(workload=rayjob(jobDeploymentStatus="Failed", jobStatus="FAILED", failed=3, message="exit code 1")),
    ], spec=spec)
    assert [s["phase"] for s in statuses] == ["Training", "Provisioning", "Training", "Provisioning", "Failed"]
    assert [s["attempts"] for s in statuses] == [1, 2, 2, 3, 3]
    assert cond(statuses[1], "Running") == ("False", "Retrying")
    assert statuses[-1]["failure"]["reason"] == "BackoffLimitExceeded"
    assert "3 attempts failed (backoffLimit 2)" in statuses[-1]["failure"]["message"]


def test_suspend_and_queue():
    spec = {**minimal_spec(), "suspend": True}
    (suspended,) = run([Observed(workload=rayjob(jobDeploymentStatus="Suspended"))], spec=spec)
    assert suspended["phase"] == "Suspended" and cond(suspended, "Suspended") == ("True", "Suspended")
    (queued,) = run([Observed(workload=rayjob(jobDeploymentStatus="Suspended"))])
    assert queued["phase"] == "Queued" and cond(queued, "Suspended") == ("True", "Queued")


def test_batch_job_engine():
    job = {"metadata": {"name": "x-train"}}
    statuses = run([
        Observed(engine="Job", workload={**job, "status": {"active": 1, "startTime": T0}},
                 pods=[pod({"phase": "Pending", **unschedulable()})]),
        Observed(engine="Job", workload={**job, "status": {"active": 1, "startTime": T0}}, pods=[pod({"phase": "Running"})]),
        Observed(engine="Job", workload={**job, "status": {"failed": 1, "startTime": T0, "conditions": [
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}}),
    ])
    assert [s["phase"] for s in statuses] == ["Provisioning", "Training", "Failed"]
    assert statuses[0]["conditions"][1]["reason"] == "Unschedulable"
    assert statuses[-1]["failure"]["reason"] == "DeadlineExceeded"


def test_conditions_transition_time_changes_only_on_status_change():
    first = set_conditions([], [{"type": "Running", "status": "False", "reason": "Pending", "message": ""}], generation=1, now=T0)
    same = set_conditions(first, [{"type": "Running", "status": "False", "reason": "Provisioning", "message": "x"}], generation=2, now=T1)
    flipped = set_conditions(same, [{"type": "Running", "status": "True", "reason": "Training", "message": ""}], generation=2, now=T2)
    assert same[0]["lastTransitionTime"] == T0 and same[0]["reason"] == "Provisioning" and same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == T2


def test_status_patch_only_when_changed():
    (status,) = run([Observed(workload=rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING"))])
    doc = body()
    doc["status"] = status
    again = desired_status(doc, Observed(workload=rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING")), now=T2)
    assert status_patch(doc["status"], again) is None


def test_rejected_status_names_every_error():
    status = rejected_status(body(), "InvalidSpec", "spec.datasets: required; spec.output: required", now=T0, failed=True)
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "InvalidSpec"
    assert cond(status, "Accepted") == ("False", "InvalidSpec")


def test_pod_cause_priority():
    assert pod_cause([pod(unschedulable()), pod(oom_killed())]).reason == "OOMKilled"
    assert pod_cause([pod({"phase": "Running"})]) is None


def test_kuberay_validation_failure_fails_the_job_with_kuberays_message():
    message = "RayJob name should be no more than 47 characters"
    (status,) = run([Observed(workload=rayjob(jobDeploymentStatus="ValidationFailed", reason="ValidationFailed",
                                              message=message))])
    assert status["phase"] == "Failed" and status["failure"] == {"reason": "ValidationFailed", "message": message}
    assert cond(status, "Failed") == ("True", "ValidationFailed") and status["completionTime"]
