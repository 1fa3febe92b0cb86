"""The monitor CronJob, its RBAC and the retraining FineTuneJob, rendered purely and validated."""

from __future__ import annotations

import json

import pytest

from kubetune.api import parse_finetunejob
from kubetune.operator.render_monitor import MonitorSettings, MonitorUnavailable, render_monitor
from kubetune.operator.render_retraining import (
    Window,
    render_retraining_job,
    retraining_job_name,
    window_from_report_uri,
)
from tests.monitoring.samples import modeldeployment

SETTINGS = MonitorSettings(payload_log_claim="payload-logs")


def by_kind(objs):
    return {o["kind"]: o for o in objs}


def test_children_validate_strictly_against_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in render_monitor(modeldeployment(), SETTINGS):
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


def test_cronjob_runs_the_monitor_argv_without_a_shell_as_non_root():
    md = modeldeployment()
    cron = by_kind(render_monitor(md, SETTINGS))["CronJob"]
    assert cron["spec"]["schedule"] == "*/15 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["kubetune"]
    assert container["args"][:5] == ["monitor", "--deployment", "support-bot", "--namespace", "ml"]
    assert "--output-uri" in container["args"]
    assert container["args"][container["args"].index("--output-uri") + 1] == "pvc://payload-logs/ml/support-bot/monitoring"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "support-bot-monitor"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["payload-logs"]["subPath"] == "ml/support-bot"  # where this deployment's gateway writes
    assert mounts["model"] == {"name": "model", "mountPath": "/mnt/pvc/models", "readOnly": True}
    for obj in render_monitor(md, SETTINGS):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("ModelDeployment", "support-bot", True)


def test_user_strings_stay_single_argv_elements():
    md = modeldeployment(name="x")
    md["spec"]["monitoring"]["schedule"] = "0 * * * *; rm -rf /"
    cron = by_kind(render_monitor(md, SETTINGS))["CronJob"]
    assert cron["spec"]["schedule"] == "0 * * * *; rm -rf /"  # the API server rejects it; never a shell
    assert all(";" not in a for a in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])


def test_role_is_least_privilege():
    role = by_kind(render_monitor(modeldeployment(), SETTINGS))["Role"]
    rules = {(tuple(r["resources"]), tuple(r["verbs"])): r.get("resourceNames") for r in role["rules"]}
    assert rules == {
        (("modeldeployments",), ("get",)): ["support-bot"],
        (("modeldeployments/status",), ("get", "patch")): ["support-bot"],
        (("finetunejobs",), ("get",)): None,
    }
    binding = by_kind(render_monitor(modeldeployment(), SETTINGS))["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "support-bot-monitor", "namespace": "ml"}]


def test_disabled_monitoring_suspends_and_missing_claim_is_explained():
    md = modeldeployment()
    md["spec"]["monitoring"]["enabled"] = False
    assert by_kind(render_monitor(md, SETTINGS))["CronJob"]["spec"]["suspend"] is True
    with pytest.raises(MonitorUnavailable, match="KUBETUNE_PAYLOAD_LOG_CLAIM"):
        render_monitor(md, MonitorSettings())


def test_retraining_job_adds_the_window_with_lineage_and_is_valid():
    md = modeldeployment()
    md["status"] = {"modelUri": "pvc://models/support/v1"}
    window = window_from_report_uri("pvc://payload-logs/ml/support-bot/monitoring/0123abcd45/report.html")
    assert window == Window("0123abcd45", "pvc://payload-logs/ml/support-bot/monitoring/0123abcd45/window.jsonl",
                            "pvc://payload-logs/ml/support-bot/monitoring/0123abcd45/preferences.jsonl")
    job = render_retraining_job(md, window, trigger="PersistentDrift", message="drift in 2 consecutive checks")
    parse_finetunejob(job)
    assert job["metadata"]["name"] == retraining_job_name("support-bot", "0123abcd45") == "support-bot-rt-0123abcd45"
    assert job["metadata"]["namespace"] == "ml"
    assert job["spec"]["datasets"][-1] == {"name": "traffic-0123abcd45", "uri": window.uri, "format": "alpaca"}
    assert job["spec"]["datasets"][0]["name"] == "base"
    labels, ann = job["metadata"]["labels"], job["metadata"]["annotations"]
    assert labels["team"] == "support" and labels["kubetune.io/retrained-from"] == "support-bot"
    assert labels["kubetune.io/window"] == "0123abcd45"
    assert ann["kubetune.io/retraining-trigger"] == "PersistentDrift"
    assert json.loads(ann["kubetune.io/retraining-thresholds"])["persistentChecks"] == 2
    assert ann["kubetune.io/retrained-model"] == "pvc://models/support/v1"
    # Deterministic: rendering again gives the same object (idempotent create).
    assert render_retraining_job(md, window, trigger="PersistentDrift", message="drift in 2 consecutive checks") == job
    assert md["spec"]["retraining"]["template"]["spec"]["datasets"] == [job["spec"]["datasets"][0]]


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_a_preference_objective_retrains_on_the_windows_rated_pairs(objective):
    md = modeldeployment()
    template = md["spec"]["retraining"]["template"]["spec"]
    template["objective"] = {"type": objective}
    template["datasets"] = [{"name": "base", "uri": "pvc://data/pairs.jsonl", "format": "preference"}]
    window = window_from_report_uri("pvc://payload-logs/ml/support-bot/monitoring/0123abcd45/report.html")
    job = render_retraining_job(md, window, trigger="PersistentDrift", message="m")
    parse_finetunejob(job)  # an alpaca window beside preference data would be rejected here
    assert job["spec"]["datasets"][-1] == {"name": "feedback-0123abcd45", "uri": window.preference_uri,
                                           "format": "preference"}
    assert json.loads(job["metadata"]["annotations"]["kubetune.io/retraining-window"])["uri"] == window.preference_uri


def test_long_names_stay_dns_labels():
    name = retraining_job_name("a" * 63, "0123abcd45")
    assert len(name) <= 63 and name.endswith(name[-8:])


def test_bad_report_uri_and_missing_template_are_errors():
    with pytest.raises(ValueError, match="reportUri"):
        window_from_report_uri("pvc://x/summary.json")
    with pytest.raises(ValueError, match="template"):
        render_retraining_job(modeldeployment(mode="Suggest"), Window("w", "u"), trigger="t", message="m")
