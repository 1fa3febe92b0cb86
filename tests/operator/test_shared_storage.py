"""The SharedStorage check: writable claims of a RayJob must be ReadWriteMany (pure part, then
through the real operator against the emulator, the claims created as a user would)."""

from __future__ import annotations

import pytest

from kubetune.api import FineTuneJob
from kubetune.operator.shared_storage import needs_shared_claims, shared_storage_condition, writable_claims
from tests.harness.client import wait_for
from tests.operator.helpers import ftj_manifest, wait_condition
from tests.operator.samples import body, full_spec, minimal_spec


def claim(name: str, *modes: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": "10Gi"}}}}


def job(spec: dict) -> FineTuneJob:
    return FineTuneJob.model_validate(body(spec=spec))


def test_only_writable_claims_count_and_only_for_rayjobs():
    full = job(full_spec())
    assert writable_claims(full) == ["checkpoints", "models"]  # datasets is mounted read-only
    assert needs_shared_claims(full)
    single = job({**minimal_spec(), "engine": "Job", "resources": {"workers": 1, "gpusPerWorker": 0}})
    assert not needs_shared_claims(single)


def test_read_write_many_is_shared():
    cond = shared_storage_condition(job(full_spec()), {"checkpoints": claim("checkpoints", "ReadWriteMany"),
                                                       "models": claim("models", "ReadWriteOnce", "ReadWriteMany")})
    assert (cond["status"], cond["reason"]) == ("True", "ReadWriteMany")


@pytest.mark.parametrize(("modes", "reason", "words"), [
    (("ReadWriteOnce",), "ReadWriteOnceClaim", "Multi-Attach"),
    (("ReadWriteOncePod",), "ReadWriteOncePodClaim", "cannot start"),
])
def test_single_node_claims_are_reported_by_name(modes, reason, words):
    cond = shared_storage_condition(job(full_spec()), {"checkpoints": claim("checkpoints", "ReadWriteMany"),
                                                       "models": claim("models", *modes)})
    assert (cond["status"], cond["reason"]) == ("False", reason)
    assert "PersistentVolumeClaim models" in cond["message"] and words in cond["message"]
    assert "PersistentVolumeClaim checkpoints" not in cond["message"]


def test_bound_access_modes_win_over_the_request_and_a_missing_claim_is_named():
    bound = {**claim("models", "ReadWriteMany"), "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"]}}
    cond = shared_storage_condition(job(minimal_spec()), {"models": bound})
    assert cond["reason"] == "ReadWriteOnceClaim"
    cond = shared_storage_condition(job(minimal_spec()), {"models": None})
    assert (cond["status"], cond["reason"]) == ("False", "ClaimNotFound") and "models does not exist" in cond["message"]


@pytest.mark.usefixtures("operator_running")
def test_the_operator_reports_a_read_write_once_output_claim(kube_http, namespace):
    kube_http.create("persistentvolumeclaims", namespace, claim("models", "ReadWriteOnce"))
    kube_http.create("finetunejobs", namespace, ftj_manifest("rwo", namespace))
    cond = wait_condition(kube_http, namespace, "rwo", "SharedStorage", "False", "ReadWriteOnceClaim")
    assert "PersistentVolumeClaim models is ReadWriteOnce" in cond["message"]
    wait_for(lambda: any(e.get("reason") == "StorageNotShared" and e.get("type") == "Warning"
                         for e in kube_http.list("events", namespace)), 10, message="a warning Event")
    assert kube_http.get("rayjobs", namespace, "rwo-train") is not None  # a warning, not a refusal


@pytest.mark.usefixtures("operator_running")
def test_the_operator_accepts_a_read_write_many_output_claim(kube_http, namespace):
    kube_http.create("persistentvolumeclaims", namespace, claim("models", "ReadWriteMany"))
    kube_http.create("finetunejobs", namespace, ftj_manifest("rwx", namespace))
    wait_condition(kube_http, namespace, "rwx", "SharedStorage", "True", "ReadWriteMany")


@pytest.mark.usefixtures("operator_running")
def test_a_missing_claim_is_checked_again_once_it_exists(kube_http, namespace):
    kube_http.create("finetunejobs", namespace, ftj_manifest("late", namespace))
    wait_condition(kube_http, namespace, "late", "SharedStorage", "False", "ClaimNotFound")
    kube_http.create("persistentvolumeclaims", namespace, claim("models", "ReadWriteMany"))
    kube_http.patch("finetunejobs", namespace, "late", {"spec": {"suspend": True}})  # any reconcile
    wait_condition(kube_http, namespace, "late", "SharedStorage", "True", "ReadWriteMany")
    warnings = [e for e in kube_http.list("events", namespace) if e.get("reason") == "StorageNotShared"]
    assert len(warnings) == 1  # one Event per cause, not one per reconcile
