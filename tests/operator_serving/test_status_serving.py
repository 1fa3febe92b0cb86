"""The pure decisions: which artifact may be served, the adapter/canary plan, conditions."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import parse_modeldeployment
from kubetune.operator import status_serving as ss


def md(spec: dict[str, Any], name: str = "chat") -> Any:
    return parse_modeldeployment({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
                                  "metadata": {"name": name, "namespace": "ml"}, "spec": spec})


def job(phase: str = "Succeeded", *, passed: bool | None = True, kind: str = "adapter", gates=None,
        deploy_to: str | None = None, completed: str = "2026-01-01T00:00:00Z", artifact: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "completionTime": completed}
    if artifact:
        status["artifact"] = {"uri": "pvc://art/run", "kind": kind, "digest": "sha256:1"}
    if passed is not None:
        status["evaluation"] = {"passed": passed, "gates": gates or []}
    spec: dict[str, Any] = {"baseModel": {"uri": "acme/base"}}
    if deploy_to:
        spec["deployTo"] = {"name": deploy_to}
    return {"spec": spec, "status": status}


# ----------------------------------------------------------------------------- gates


@pytest.mark.parametrize(
    ("the_job", "reason", "phase", "words"),
    [
        (None, "FineTuneJobNotFound", "Pending", ["'ft'", "'ml'"]),
        (job("Training"), "WaitingForTraining", "WaitingForTraining", ["Training"]),
        ({"spec": {}, "status": {}}, "WaitingForTraining", "WaitingForTraining", ["Pending"]),
        (job("Failed") | {"status": {"phase": "Failed", "failure": {"reason": "OOMKilled", "message": "worker 1"}}},
         "TrainingFailed", "Failed", ["OOMKilled", "worker 1"]),
        (job(passed=None), "GatesNotPassed", "Failed", ["no evaluation results"]),
        (job(passed=False, gates=[
            {"metric": "evalLoss", "operator": "<=", "threshold": 2.0, "value": 2.5, "passed": False},
            {"metric": "rougeL", "operator": ">=", "threshold": 0.3, "value": 0.4, "passed": True},
            {"metric": "exactMatch", "operator": ">=", "threshold": 0.5, "value": None, "passed": False},
        ]), "GatesNotPassed", "Failed", ["evalLoss=2.5 (needs <= 2)", "exactMatch=not measured (needs >= 0.5)"]),
        (job(artifact=False), "ArtifactMissing", "Failed", ["status.artifact.uri"]),
    ],
)
def test_job_blockers_name_the_reason_and_values(the_job, reason, phase, words):
    blocked = ss.job_blocker("ft", the_job, "ml")
    assert blocked is not None and blocked.reason == reason and blocked.phase == phase
    for word in words:
        assert word in blocked.message
    if reason == "GatesNotPassed" and "rougeL" not in words:
        assert "rougeL" not in blocked.message  # passed gates are not listed


def test_a_passed_job_is_servable():
    assert ss.job_blocker("ft", job(), "ml") is None


def test_adapter_artifact_serves_over_its_base_under_the_deployment_name():
    choice = ss.resolve_model(md({"model": {"fineTuneJobRef": {"name": "ft"}}}), {"ft": job()})
    assert choice.source == "FineTuneJob/ft"
    assert choice.model.uri == "acme/base" and choice.model.served_name == "chat-base"
    assert (choice.model.adapter.name, choice.model.adapter.path) == ("chat", "pvc://art/run/adapter")
    override = ss.resolve_model(md({"model": {"fineTuneJobRef": {"name": "ft"}, "baseModel": "pvc://m/base"}}), {"ft": job()})
    assert override.model.uri == "pvc://m/base"


def test_merged_artifact_is_the_model_itself():
    choice = ss.resolve_model(md({"model": {"fineTuneJobRef": {"name": "ft"}}}), {"ft": job(kind="merged")})
    assert choice.model.uri == "pvc://art/run/merged" and choice.model.adapter is None
    assert choice.model.served_name == "chat"


def test_deploy_to_promotes_the_newest_passed_job():
    jobs = {
        "ft-old": job(kind="merged", completed="2026-01-01T00:00:00Z"),
        "ft-new": job(kind="merged", deploy_to="chat", completed="2026-02-01T00:00:00Z"),
        "ft-newest-failed": job(kind="merged", deploy_to="chat", passed=False, completed="2026-03-01T00:00:00Z"),
        "ft-other": job(kind="merged", deploy_to="other", completed="2026-04-01T00:00:00Z"),
    }
    choice = ss.resolve_model(md({"model": {"fineTuneJobRef": {"name": "ft-old"}}}), jobs)
    assert choice.source == "FineTuneJob/ft-new"
    by_uri = ss.resolve_model(md({"model": {"uri": "acme/m"}}), jobs)
    assert by_uri.source == "FineTuneJob/ft-new"
    # A referenced job still training does not block a promoted one from serving.
    waiting = ss.resolve_model(md({"model": {"fineTuneJobRef": {"name": "ft-x"}}}), {**jobs, "ft-x": job("Training")})
    assert waiting.source == "FineTuneJob/ft-new"
    nothing = ss.resolve_model(md({"model": {"fineTuneJobRef": {"name": "ft-x"}}}), {"ft-x": job("Training")})
    assert nothing.model is None and nothing.blocked.reason == "WaitingForTraining"


def test_adapters_from_jobs_wait_for_their_gates():
    spec = {"model": {"uri": "acme/m"}, "adapters": [
        {"name": "a", "uri": "pvc://x/a"},
        {"name": "b", "fineTuneJobRef": {"name": "ft-b"}},
        {"name": "c", "fineTuneJobRef": {"name": "ft-c"}},
        {"name": "d", "fineTuneJobRef": {"name": "ft-d"}},
    ]}
    jobs = {"ft-b": job(), "ft-c": job(passed=False), "ft-d": job(kind="merged")}
    ready, waiting = ss.resolve_adapters(md(spec), jobs)
    assert [(a.name, a.uri) for a in ready] == [("a", "pvc://x/a"), ("b", "pvc://art/run/adapter")]
    assert any(w.startswith("adapter 'c'") and "gates" in w for w in waiting)
    assert any(w.startswith("adapter 'd'") and "'merged'" in w for w in waiting)


# ----------------------------------------------------------------------------- adapters, canary


def plan(desired, stable, canary=None, strategy="Canary", action=None, rolled_back=None, weight=10):
    return ss.plan_adapters(
        [ss.DesiredAdapter(n, u) for n, u in desired.items()], stable=stable, canary=canary,
        strategy=strategy, weight=weight, action=action, rolled_back=rolled_back or {},
    )


def test_replace_switches_at_once_and_removed_adapters_go():
    p = plan({"a": "v2", "new": "n1"}, {"a": "v1", "gone": "g1"}, strategy="Replace")
    assert p.stable == {"a": "v2", "new": "n1"} and p.canary is None and p.routes == []
    assert any("removed" in n for n in p.notes)


def test_canary_lifecycle_start_hold_promote():
    started = plan({"a": "v2"}, {"a": "v1"}, weight=30)
    assert started.canary == {"adapter": "a", "weight": 30, "uri": "v2", "previousUri": "v1"}
    assert started.serve == {"a": "v1", "a-canary": "v2"}
    assert [(r.model, r.canary, r.weight) for r in started.routes] == [("a", "a-canary", 30)]
    # Idempotent: the same inputs on the next resync change nothing.
    again = plan({"a": "v2"}, started.stable, started.canary, weight=30)
    assert again.canary == started.canary and again.stable == started.stable and again.notes == []
    promoted = plan({"a": "v2"}, started.stable, started.canary, action="promote")
    assert promoted.stable == {"a": "v2"} and promoted.canary is None and promoted.annotation_done
    assert promoted.serve == {"a": "v2"}


def test_rollback_refuses_the_version_until_the_spec_moves_on():
    started = plan({"a": "v2"}, {"a": "v1"})
    rolled = plan({"a": "v2"}, started.stable, started.canary, action="rollback")
    assert rolled.stable == {"a": "v1"} and rolled.canary is None and rolled.rolled_back == {"a": "v2"}
    later = plan({"a": "v2"}, rolled.stable, None, rolled_back=rolled.rolled_back)
    assert later.canary is None and later.rolled_back == {"a": "v2"}
    moved_on = plan({"a": "v3"}, rolled.stable, None, rolled_back=rolled.rolled_back)
    assert moved_on.canary["uri"] == "v3" and moved_on.rolled_back == {}


def test_canary_is_superseded_cancelled_or_ended_by_the_spec():
    started = plan({"a": "v2"}, {"a": "v1"})
    superseded = plan({"a": "v3"}, started.stable, started.canary)
    assert superseded.canary["uri"] == "v3" and superseded.canary["previousUri"] == "v1"
    cancelled = plan({"a": "v1"}, started.stable, started.canary)
    assert cancelled.canary is None and cancelled.stable == {"a": "v1"}
    ended = plan({}, started.stable, started.canary)
    assert ended.canary is None and ended.stable == {}


def test_one_canary_at_a_time_and_stray_annotations_are_consumed():
    started = plan({"a": "v2", "b": "w1"}, {"a": "v1", "b": "w1"})
    other = plan({"a": "v2", "b": "w2"}, started.stable, started.canary)
    assert other.canary["adapter"] == "a" and other.stable["b"] == "w1"
    assert any("'b' waits" in h for h in other.held)
    stray = plan({"a": "v1"}, {"a": "v1"}, action="promote")
    assert stray.annotation_done and any("no canary" in n for n in stray.notes)
    junk = plan({"a": "v2"}, {"a": "v1"}, started.canary, action="yes-please")
    assert junk.annotation_done and junk.canary is not None


def test_revisions_keep_the_superseded_version():
    revisions = ss.update_revisions({}, {"a": "v1", "b": "w1"}, {"a": "v2", "b": "w1"})
    assert revisions == {"a": {"current": "v2", "previous": "v1"}}
    assert ss.update_revisions(revisions, {"a": "v2"}, {"a": "v2"}) == revisions
    assert ss.update_revisions(revisions, {"a": "v2"}, {}) == {}


def test_adapter_status_carries_per_pod_state():
    p = plan({"a": "v2"}, {"a": "v1"})
    states = {"pod-1": {"a": ("Loaded", ""), "a-canary": ("Failed", "boom")}, "pod-2": {"a": ("Loading", "")}}
    status = ss.adapter_status(p, [ss.DesiredAdapter("a", "v2", "sha256:9")], states)
    assert status == [
        {"name": "a", "uri": "v1", "pods": [{"pod": "pod-1", "state": "Loaded"}, {"pod": "pod-2", "state": "Loading"}]},
        {"name": "a-canary", "uri": "v2", "digest": "sha256:9",
         "pods": [{"pod": "pod-1", "state": "Failed", "message": "boom"}]},
    ]


# ----------------------------------------------------------------------------- conditions


def deployment(ready: int, replicas: int = 2, conditions=None) -> dict[str, Any]:
    return {"spec": {"replicas": replicas},
            "status": {"readyReplicas": ready, "updatedReplicas": ready, "conditions": conditions or []}}


def by_type(conditions):
    return {c["type"]: c for c in conditions}


def test_conditions_follow_the_deployment():
    phase, conds = ss.serving_conditions(None)
    assert phase == "Deploying" and by_type(conds)["Ready"]["status"] == "False"

    phase, conds = ss.serving_conditions(ss.deployment_health(deployment(0)))
    assert phase == "Deploying" and by_type(conds)["Ready"]["reason"] == "Starting"

    phase, conds = ss.serving_conditions(ss.deployment_health(deployment(1)))
    c = by_type(conds)
    assert phase == "Deploying" and c["Ready"]["status"] == "True" and c["Progressing"]["status"] == "True"
    assert "1/2 replicas ready" in c["Progressing"]["message"]

    phase, conds = ss.serving_conditions(ss.deployment_health(deployment(2)))
    c = by_type(conds)
    assert phase == "Ready" and c["Progressing"]["reason"] == "Stable" and c["Degraded"]["status"] == "False"


def test_stalled_rollout_and_failed_adapters_degrade():
    stalled = deployment(0, conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                         "message": "ReplicaSet has timed out progressing."}])
    phase, conds = ss.serving_conditions(ss.deployment_health(stalled))
    c = by_type(conds)
    assert phase == "Failed" and c["Ready"]["reason"] == "RolloutStalled"
    assert c["Degraded"]["status"] == "True" and "ProgressDeadlineExceeded" in c["Degraded"]["message"]

    phase, conds = ss.serving_conditions(ss.deployment_health(deployment(2)), adapter_failures=["a on p: HTTP 404"])
    c = by_type(conds)
    assert phase == "Degraded" and c["Ready"]["status"] == "True"
    assert c["Degraded"]["reason"] == "AdapterLoadFailed" and "HTTP 404" in c["Degraded"]["message"]


def test_blocked_conditions():
    conds = by_type(ss.blocked_conditions(ss.Blocked("GatesNotPassed", "evalLoss=3 (needs <= 2)", "Failed")))
    assert conds["Ready"] == {"type": "Ready", "status": "False", "reason": "GatesNotPassed",
                              "message": "evalLoss=3 (needs <= 2)"}
    assert conds["Progressing"]["status"] == "False"
    assert by_type(ss.blocked_conditions(ss.Blocked("WaitingForTraining", "x")))["Progressing"]["status"] == "True"


def test_an_unobserved_template_change_is_progressing_and_zero_replicas_is_not_ready():
    rolled = deployment(2)
    rolled["metadata"] = {"generation": 3}
    rolled["status"]["observedGeneration"] = 2
    phase, conds = ss.serving_conditions(ss.deployment_health(rolled))
    assert phase == "Deploying" and by_type(conds)["Progressing"]["reason"] == "RollingOut"
    assert "not rolled out yet" in by_type(conds)["Progressing"]["message"]
    rolled["status"]["observedGeneration"] = 3
    assert ss.serving_conditions(ss.deployment_health(rolled))[0] == "Ready"

    phase, conds = ss.serving_conditions(ss.deployment_health(deployment(0, replicas=0)))
    assert phase == "Pending" and by_type(conds)["Ready"]["reason"] == "ScaledToZero"
