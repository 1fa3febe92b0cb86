"""The loop on the emulator: the real monitor job writes drifted status, the real operator acts.

Real kopf, real HTTP (the kubernetes client) against the kmock-based emulator; no CronJob
controller runs there, so the test runs the job's code (`kubetune monitor --deployment`) itself.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from kubetune.cli import build_parser
from tests.harness.client import wait_for
from tests.harness.operator import OperatorRunner
from tests.monitoring.samples import modeldeployment
from tests.monitoring.synthetic import pairs

pytestmark = pytest.mark.slow
# The monitor's "now" in these tests, ahead of the real clock. The operator stamps lastDeployTime
# with the real time, and a deploy later than the last check restarts the drift count: a fixed
# date made the persistent-drift tests fail on every run after that date.
T0 = (datetime.now(timezone.utc) + timedelta(hours=6)).replace(second=0, microsecond=0)


def rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module", autouse=True)
def heavy_imports_before_the_operator_thread():
    """Import Evidently & co. before kopf's thread starts: CPython 3.11's ast.parse is not thread-safe
    ("AST constructor recursion depth mismatch") and pytest's import hook parses plugin modules
    (anyio's) while the operator thread imports too. In production they are separate processes."""
    import evidently  # noqa: F401
    import evidently.descriptors  # noqa: F401
    import evidently.metrics  # noqa: F401
    import vaderSentiment.vaderSentiment  # noqa: F401

    from kubetune.common.safety import OfflineScorer

    OfflineScorer().score("warm", "up")  # loads the optional toxicity model


@pytest.fixture(scope="module", autouse=True)
def cronjobs_served(k8s_emulator):
    """The shared emulator has no CronJob kind built in (tests/harness is not ours): add it."""
    from tests.harness.emulator import Kind

    emulator = k8s_emulator.emulator
    kind = Kind("batch", "v1", "cronjobs", "CronJob", subresources=("status",), short_names=("cj",))
    if ("batch", "v1", "cronjobs") not in emulator._kinds:
        k8s_emulator.call(lambda: emulator.register_kind(kind))


@pytest.fixture()
def cluster_files(tmp_path, monkeypatch):
    """The served artifact on a 'PVC' and a payload log with a new topic in 30% of prompts."""
    pvc = tmp_path / "pvc"
    artifact = pvc / "models" / "support" / "v1"
    artifact.mkdir(parents=True)
    (artifact / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs(300, 1)))
    (artifact / "manifest.json").write_text(json.dumps({"reference": {"file": "reference.jsonl", "rows": 300}}))
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = pairs(300, 2, shifted_share=0.3)
    stamp = rfc3339(T0 - timedelta(minutes=5))
    (logs / "payloads.jsonl").write_text("".join(
        json.dumps({"id": f"req-{i}", "time": stamp, **r, "safety": {"flagged": False, "score": 0.0, "categories": {}}})
        + "\n" for i, r in enumerate(rows)))
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(pvc))
    monkeypatch.setenv("KUBETUNE_PAYLOAD_LOG_CLAIM", "payload-logs")
    from kubetune.operator import handlers_monitoring

    handlers_monitoring.reset_state()
    yield logs
    handlers_monitoring.reset_state()


def run_monitor(kube_client, namespace, logs, now):
    from kubernetes import client

    from kubetune.monitoring.cluster import run_in_cluster

    args = build_parser().parse_args([
        "monitor", "--deployment", "support-bot", "--namespace", namespace, "--log-dir", str(logs),
        "--output-uri", f"pvc://payload-logs/{namespace}/support-bot/monitoring", "--no-embeddings",
    ])
    return run_in_cluster(args, log=print, api=client.CustomObjectsApi(kube_client), now=now)


def status(kube_http, namespace):
    return kube_http.get("modeldeployments", namespace, "support-bot").get("status") or {}


def cond(st, type_):
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), None)


def retraining_jobs(kube_http, namespace):
    return [j for j in kube_http.list("finetunejobs", namespace)
            if (j["metadata"].get("labels") or {}).get("kubetune.io/retrained-from") == "support-bot"]


def test_auto_creates_exactly_one_finetunejob_across_restarts(
    k8s_emulator, kube_http, kube_client, namespace, cluster_files
):
    kube_http.create("modeldeployments", namespace, modeldeployment(namespace=namespace, mode="Auto"))
    with OperatorRunner(k8s_emulator.kubeconfig):
        cron = wait_for(lambda: kube_http.http.get(
            f"/apis/batch/v1/namespaces/{namespace}/cronjobs/support-bot-monitor").status_code == 200, 60,
            message="monitor CronJob")
        assert cron
        assert kube_http.get("roles", namespace, "support-bot-monitor")["rules"][0]["resourceNames"] == ["support-bot"]

        assert run_monitor(kube_client, namespace, cluster_files, T0) == 0
        st = status(kube_http, namespace)
        assert st["monitoring"]["driftDetected"] is True and st["monitoring"]["consecutiveDriftChecks"] == 1
        assert st["monitoring"]["samples"] == 300
        assert st["monitoring"]["verdict"] == "Drift"
        significant = [n for n, p in st["monitoring"]["driftPValues"].items()
                       if p <= st["monitoring"]["driftThresholds"][n]]
        assert significant and "prompt.content" in significant
        assert st["monitoring"]["feedback"] == {"rated": 0, "positive": 0, "negative": 0, "preferencePairs": 0}
        assert cond(st, "Drifted")["status"] == "True"
        assert cond(st, "RetrainingRequested")["status"] == "False"  # drift not yet persistent (2 checks)
        from prometheus_client import REGISTRY

        share = wait_for(lambda: REGISTRY.get_sample_value("kubetune_drift_share", {"namespace": namespace, "deployment": "support-bot"}),
                         30, message="drift share gauge")
        assert share == st["monitoring"]["driftShare"]

        assert run_monitor(kube_client, namespace, cluster_files, T0 + timedelta(minutes=15)) == 0
        jobs = wait_for(lambda: retraining_jobs(kube_http, namespace), 60, message="retraining FineTuneJob")
        # The status write that records the job follows its creation: wait for it while the
        # operator still runs (a stop gives running handlers only a moment).
        st = wait_for(lambda: (s := status(kube_http, namespace)).get("lastRetrainJob") and s, 30)
    assert len(jobs) == 1
    job = jobs[0]
    assert st["lastRetrainJob"] == job["metadata"]["name"] and len(st["retrainJobs"]) == 1
    assert cond(st, "RetrainingRequested")["reason"] == "JobCreated"
    traffic = job["spec"]["datasets"][-1]
    assert traffic["format"] == "alpaca" and traffic["uri"].endswith("/window.jsonl")
    wid = job["metadata"]["labels"]["kubetune.io/window"]
    assert (cluster_files / "monitoring" / wid / "window.jsonl").is_file()
    assert job["metadata"]["annotations"]["kubetune.io/retraining-trigger"] == "PersistentDrift"

    # Operator down, the request re-opened as if the status patch had been lost: a new operator
    # finds the job by its deterministic name instead of creating a second one.
    requested = dict(cond(st, "RetrainingRequested"), status="True", reason="PersistentDrift")
    others = [c for c in st["conditions"] if c["type"] != "RetrainingRequested"]
    kube_http.patch_status("modeldeployments", namespace, "support-bot", {"conditions": [*others, requested]})
    with OperatorRunner(k8s_emulator.kubeconfig):
        wait_for(lambda: cond(status(kube_http, namespace), "RetrainingRequested")["status"] == "False", 60)
        # A third drifted check while the job still runs: the policy holds back.
        assert run_monitor(kube_client, namespace, cluster_files, T0 + timedelta(minutes=30)) == 0
        st = status(kube_http, namespace)
        assert cond(st, "RetrainingRequested")["reason"] == "RetrainingInFlight"
    assert len(retraining_jobs(kube_http, namespace)) == 1
    assert len(status(kube_http, namespace)["retrainJobs"]) == 1


def test_a_dpo_template_retrains_on_the_rated_pairs_and_waits_while_there_are_none(
    k8s_emulator, kube_http, kube_client, namespace, cluster_files
):
    md = modeldeployment(namespace=namespace, mode="Auto")
    template = md["spec"]["retraining"]["template"]["spec"]
    template["objective"] = {"type": "dpo"}
    template["datasets"] = [{"name": "base", "uri": "pvc://data/pairs.jsonl", "format": "preference"}]
    kube_http.create("modeldeployments", namespace, md)
    with OperatorRunner(k8s_emulator.kubeconfig):
        wait_for(lambda: kube_http.get("cronjobs", namespace, "support-bot-monitor"), 60, message="monitor CronJob")
        run_monitor(kube_client, namespace, cluster_files, T0)
        run_monitor(kube_client, namespace, cluster_files, T0 + timedelta(minutes=15))
        # Persistent drift, but no answer was rated: nothing for DPO to learn from.
        refused = wait_for(lambda: (c := cond(status(kube_http, namespace), "RetrainingRequested"))
                           and c["reason"] == "NoPreferencePairs" and c, 60, message="NoPreferencePairs")
        assert refused["status"] == "False" and "objective dpo" in refused["message"]
        assert retraining_jobs(kube_http, namespace) == []

        # Clients rate two answers to the same prompt, one up and one down: one pair.
        stamp = rfc3339(T0 + timedelta(minutes=20))
        rated = [{"id": "r-1", "time": stamp, "prompt": "How do I reset my password?",
                  "response": "Open Settings, then Security, then Reset.", "feedback": {"rating": 1}},
                 {"id": "r-2", "time": stamp, "prompt": "How do I reset my password?",
                  "response": "I cannot help with that.", "feedback": {"rating": -1}}]
        with (cluster_files / "payloads.jsonl").open("a") as log:
            log.write("".join(json.dumps(r) + "\n" for r in rated))
        run_monitor(kube_client, namespace, cluster_files, T0 + timedelta(minutes=30))
        assert status(kube_http, namespace)["monitoring"]["feedback"]["preferencePairs"] == 1
        jobs = wait_for(lambda: retraining_jobs(kube_http, namespace), 60, message="retraining FineTuneJob")
    pairs_source = jobs[0]["spec"]["datasets"][-1]
    assert pairs_source["format"] == "preference" and pairs_source["uri"].endswith("/preferences.jsonl")
    wid = jobs[0]["metadata"]["labels"]["kubetune.io/window"]
    written = [json.loads(x) for x in (cluster_files / "monitoring" / wid / "preferences.jsonl").read_text().splitlines()]
    assert written == [{"prompt": "How do I reset my password?", "chosen": "Open Settings, then Security, then Reset.",
                        "rejected": "I cannot help with that."}]


def test_suggest_sets_a_condition_and_an_event_but_creates_nothing(
    k8s_emulator, kube_http, kube_client, namespace, cluster_files
):
    kube_http.create("modeldeployments", namespace, modeldeployment(namespace=namespace, mode="Suggest"))
    with OperatorRunner(k8s_emulator.kubeconfig, extra_labels={"team": "ml-platform"}):
        cron = wait_for(lambda: kube_http.get("cronjobs", namespace, "support-bot-monitor"), 60, message="monitor CronJob")
        deployment = wait_for(lambda: kube_http.get("deployments", namespace, "support-bot-vllm"), 60, message="Deployment")
        # KUBETUNE_EXTRA_LABELS: on the serving and monitoring children and their pods, ours kept.
        for meta in (cron["metadata"], cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
                     deployment["metadata"], deployment["spec"]["template"]["metadata"],
                     kube_http.get("roles", namespace, "support-bot-monitor")["metadata"]):
            assert meta["labels"]["team"] == "ml-platform"
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubetune-operator"
        run_monitor(kube_client, namespace, cluster_files, T0)
        run_monitor(kube_client, namespace, cluster_files, T0 + timedelta(minutes=15))
        st = status(kube_http, namespace)
        assert cond(st, "RetrainingSuggested")["status"] == "True"
        assert cond(st, "RetrainingSuggested")["reason"] == "PersistentDrift"
        wait_for(lambda: [e for e in kube_http.list("events", namespace) if e.get("reason") == "RetrainingSuggested"],
                 60, message="RetrainingSuggested event")
    assert retraining_jobs(kube_http, namespace) == []
    assert kube_http.list("finetunejobs", namespace) == []


def test_after_a_new_deploy_the_reference_moves_and_the_count_restarts(
    k8s_emulator, kube_http, kube_client, namespace, cluster_files, tmp_path
):
    """No operator needed: the monitor job alone reads the new artifact and resets its count."""
    md = modeldeployment(namespace=namespace, mode="Suggest")
    kube_http.create("modeldeployments", namespace, md)
    kube_http.patch_status("modeldeployments", namespace, "support-bot",
                           {"modelUri": "pvc://models/support/v1", "lastDeployTime": rfc3339(T0 - timedelta(days=3))})
    assert run_monitor(kube_client, namespace, cluster_files, T0) == 0
    assert run_monitor(kube_client, namespace, cluster_files, T0 + timedelta(minutes=15)) == 0
    st = status(kube_http, namespace)
    assert st["monitoring"]["consecutiveDriftChecks"] == 2 and cond(st, "RetrainingSuggested")["status"] == "True"

    # The retrained model went live; its reference is today's traffic.
    v2 = tmp_path / "pvc" / "models" / "support" / "v2"
    v2.mkdir(parents=True)
    (v2 / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs(300, 7, shifted_share=0.3)))
    (v2 / "manifest.json").write_text(json.dumps({"reference": {"file": "reference.jsonl"}}))
    kube_http.patch_status("modeldeployments", namespace, "support-bot",
                           {"modelUri": "pvc://models/support/v2", "lastDeployTime": rfc3339(T0 + timedelta(minutes=20))})
    assert run_monitor(kube_client, namespace, cluster_files, T0 + timedelta(minutes=30)) == 0
    st = status(kube_http, namespace)
    assert st["monitoring"]["driftDetected"] is False and st["monitoring"]["consecutiveDriftChecks"] == 0
    assert cond(st, "Drifted")["status"] == "False"
    assert cond(st, "RetrainingSuggested")["status"] == "False"


def test_missing_reference_profile_sets_drifted_unknown(k8s_emulator, kube_http, kube_client, namespace,
                                                        cluster_files, tmp_path):
    kube_http.create("modeldeployments", namespace, modeldeployment(namespace=namespace, mode="Suggest"))
    kube_http.patch_status("modeldeployments", namespace, "support-bot", {"modelUri": "pvc://models/nothing-here"})
    assert run_monitor(kube_client, namespace, cluster_files, T0) == 2
    drifted = cond(status(kube_http, namespace), "Drifted")
    assert (drifted["status"], drifted["reason"]) == ("Unknown", "ReferenceMissing")
    assert "nothing-here" in drifted["message"]
