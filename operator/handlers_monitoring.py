"""kopf wiring for monitoring: the monitor CronJob, the monitoring gauges, and retraining.

Level-based on every ModelDeployment event (kopf replays all objects after a restart):

- the monitor CronJob and its RBAC follow spec.monitoring and the served model's claim;
- status.monitoring becomes the `kubetune_drift_*`, `kubetune_safety_flag_ratio` and
  `kubetune_monitor_samples` gauges;
- the monitor job's `RetrainingRequested=True` becomes one FineTuneJob (deterministic name from
  deployment + window, so a restart or a replayed event finds it instead of creating another),
  and `RetrainingSuggested=True` becomes an Event. The policy itself ran in the monitor job.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from prometheus_client import Counter, Gauge

from kubetune.api import ManifestError, parse_finetunejob

from . import events
from .conditions import condition, find_condition, now_rfc3339, set_conditions
from .k8s import AlreadyExists, KubeApi, KubeError, Resource, api_of, reset_shared_api
from .render_common import add_labels
from .render_monitor import MonitorSettings, MonitorUnavailable, monitor_name, render_monitor
from .render_retraining import (
    LABEL_RETRAINED_FROM,
    Window,
    render_retraining_job,
    retraining_job_name,
    trains_on_preferences,
    window_from_report_uri,
)

log = logging.getLogger(__name__)

GROUP, VERSION = "kubetune.io", "v1alpha1"
MD = (GROUP, VERSION, "modeldeployments")
MD_RES = Resource(f"{GROUP}/{VERSION}", "modeldeployments")
FTJ_RES = Resource(f"{GROUP}/{VERSION}", "finetunejobs")
CRONJOB_RES = Resource("batch/v1", "cronjobs")
TERMINAL = {"Succeeded", "Failed", "Cancelled"}

# `namespace` is the ModelDeployment's: two deployments of one name in two namespaces are two
# series. The chart's ServiceMonitor keeps it over the scrape target's own (honorLabels).
DEPLOYMENT_LABELS = ["namespace", "deployment"]
DRIFT_SHARE = Gauge("kubetune_drift_share", "Share of drifted signals in the last monitor check.", DEPLOYMENT_LABELS)
DRIFT_SCORE = Gauge("kubetune_drift_score", "Drift effect per signal in the last monitor check (K-S distance "
                    "or held-out ROC AUC).", [*DEPLOYMENT_LABELS, "signal"])
DRIFT_P_VALUE = Gauge("kubetune_drift_p_value", "p-value per signal in the last monitor check; the signal drifted "
                      "when it is at most its Holm-corrected level.", [*DEPLOYMENT_LABELS, "signal"])
DRIFT_SIGNIFICANT = Gauge("kubetune_drift_significant", "1 when the signal drifted in the last monitor check (its "
                          "p-value at most its Holm-corrected level), else 0.", [*DEPLOYMENT_LABELS, "signal"])
SAFETY_FLAG_RATIO = Gauge("kubetune_safety_flag_ratio", "Share of flagged responses in the monitor window.",
                          DEPLOYMENT_LABELS)
MONITOR_SAMPLES = Gauge("kubetune_monitor_samples", "Logged requests in the monitor window.", DEPLOYMENT_LABELS)
RETRAINING_JOBS = Counter(
    "kubetune_retraining_jobs_total", "Retraining decisions acted on (retrain: job created; suggest: event).",
    [*DEPLOYMENT_LABELS, "decision"],
)

_state: dict[str, Any] = {"applied": {}, "signals": {}, "suggested": set()}


def _settings(memo: Any) -> MonitorSettings:
    if "settings" not in _state:
        operator_settings = getattr(memo, "settings", None)
        _state["settings"] = dataclasses.replace(
            MonitorSettings.from_env(), extra_labels=dict(getattr(operator_settings, "extra_labels", None) or {}))
    return _state["settings"]


def reset_state() -> None:
    """Forget clients, settings and caches (tests start operators with other environments)."""
    reset_shared_api()
    _state.pop("settings", None)
    _state.update(applied={}, signals={}, suggested=set())


# ----------------------------------------------------------------------------- gauges


def export_gauges(namespace: str, name: str, monitoring: Mapping[str, Any] | None) -> None:
    """Gauges from status.monitoring; signals that disappeared are removed."""
    monitoring = monitoring or {}
    key = (namespace, name)
    if monitoring.get("driftShare") is not None:
        DRIFT_SHARE.labels(*key).set(float(monitoring["driftShare"]))
    if monitoring.get("safetyFlagRatio") is not None:
        SAFETY_FLAG_RATIO.labels(*key).set(float(monitoring["safetyFlagRatio"]))
    if monitoring.get("samples") is not None:
        MONITOR_SAMPLES.labels(*key).set(float(monitoring["samples"]))
    scores = monitoring.get("driftScores") or {}
    p_values = monitoring.get("driftPValues") or {}
    for signal, score in scores.items():
        DRIFT_SCORE.labels(*key, signal).set(float(score))
    levels = monitoring.get("driftThresholds") or {}
    for signal, p_value in p_values.items():
        DRIFT_P_VALUE.labels(*key, signal).set(float(p_value))
        if signal in levels:
            DRIFT_SIGNIFICANT.labels(*key, signal).set(1.0 if float(p_value) <= float(levels[signal]) else 0.0)
    for gone in _state["signals"].get(key, set()) - set(scores):
        _remove(DRIFT_SCORE, *key, gone)
    for gone in _state["signals"].get(key, set()) - set(p_values):
        _remove(DRIFT_P_VALUE, *key, gone)
        _remove(DRIFT_SIGNIFICANT, *key, gone)
    _state["signals"][key] = set(scores) | set(p_values)


def forget_gauges(namespace: str, name: str) -> None:
    for gauge in (DRIFT_SHARE, SAFETY_FLAG_RATIO, MONITOR_SAMPLES):
        _remove(gauge, namespace, name)
    for signal in _state["signals"].pop((namespace, name), set()):
        _remove(DRIFT_SCORE, namespace, name, signal)
        _remove(DRIFT_P_VALUE, namespace, name, signal)
        _remove(DRIFT_SIGNIFICANT, namespace, name, signal)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


# ----------------------------------------------------------------------------- the monitor CronJob


async def ensure_monitor(api: KubeApi, body: Mapping[str, Any], settings: MonitorSettings) -> None:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    monitoring = (body.get("spec") or {}).get("monitoring") or {}
    fingerprint = (repr(monitoring), (body.get("status") or {}).get("modelUri"), meta.get("uid"))
    if _state["applied"].get(key) == fingerprint:
        return
    if monitoring.get("enabled", True) is False:
        await api.delete(CRONJOB_RES, meta["namespace"], monitor_name(meta["name"]))
        _state["applied"][key] = fingerprint
        return
    try:
        children = render_monitor(body, settings)
    except MonitorUnavailable as exc:
        if _state["applied"].get(key) != ("unavailable",):
            events.emit(body, "MonitoringUnavailable", str(exc), warning=True)
            log.warning("%s/%s: %s", *key, exc)
        _state["applied"][key] = ("unavailable",)
        return
    for child in children:
        await api.apply(add_labels(child, settings.extra_labels))
    _state["applied"][key] = fingerprint


# ----------------------------------------------------------------------------- retraining


async def _set_status(api: KubeApi, body: Mapping[str, Any], conditions: list[dict], **fields: Any) -> None:
    status = body.get("status") or {}
    merged = set_conditions(status.get("conditions"), conditions, generation=None, now=now_rfc3339())
    await api.patch_status(MD_RES, body["metadata"]["namespace"], body["metadata"]["name"],
                           {"conditions": merged, **fields})


async def act_on_retraining(api: KubeApi, body: Mapping[str, Any]) -> str | None:
    """Create the requested FineTuneJob (once); returns its name, or None when nothing was due."""
    meta, status = body["metadata"], body.get("status") or {}
    namespace, name = meta["namespace"], meta["name"]
    request = find_condition(status.get("conditions"), "RetrainingRequested")
    if not request or request.get("status") != "True":
        return None
    mode = ((body.get("spec") or {}).get("retraining") or {}).get("mode", "Never")
    if mode != "Auto":
        await _set_status(api, body, [condition("RetrainingRequested", False, "NotAuto",
                                                f"retraining mode is {mode}; nothing created")])
        return None
    monitoring = status.get("monitoring") or {}
    try:
        window = window_from_report_uri(monitoring.get("reportUri") or "")
        job = render_retraining_job(body, window, trigger=request.get("reason", ""), message=request.get("message", ""))
        parse_finetunejob(job)
    except (ValueError, ManifestError) as exc:
        events.emit(body, "RetrainingInvalid", str(exc), warning=True)
        await _set_status(api, body, [condition("RetrainingRequested", False, "InvalidTemplate", str(exc)[:2000])])
        return None
    pairs = (monitoring.get("feedback") or {}).get("preferencePairs") or 0
    if trains_on_preferences(job["spec"]) and pairs == 0:
        why = (f"the template's objective {job['spec']['objective']['type']} trains on rated pairs, and window "
               f"{window.id} has none (a prompt needs one answer rated +1 and another rated -1 or flagged)")
        await _set_status(api, body, [condition("RetrainingRequested", False, "NoPreferencePairs", why)])
        return None
    job_name = job["metadata"]["name"]
    if await api.get(FTJ_RES, namespace, job_name) is None:
        others = await api.list(FTJ_RES, namespace, label_selector=f"{LABEL_RETRAINED_FROM}={name}")
        running = [j["metadata"]["name"] for j in others
                   if j["metadata"]["name"] != job_name and (j.get("status") or {}).get("phase") not in TERMINAL]
        if running:
            await _set_status(api, body, [condition("RetrainingRequested", False, "RetrainingInFlight",
                                                    f"{', '.join(running)} still running; not starting another")])
            return None
        try:
            await api.create(job)
            RETRAINING_JOBS.labels(namespace, name, "retrain").inc()
            events.emit(body, "RetrainingStarted", f"created FineTuneJob {job_name}: {request.get('message', '')}")
        except AlreadyExists:
            pass
    fields: dict[str, Any] = {"lastRetrainJob": job_name}
    if status.get("lastRetrainJob") != job_name:
        fields["retrainJobs"] = ([*(status.get("retrainJobs") or [])] + [now_rfc3339()])[-100:]
    await _set_status(api, body, [condition("RetrainingRequested", False, "JobCreated",
                                            f"FineTuneJob {job_name} trains on window {window.id}")], **fields)
    return job_name


def note_suggestion(body: Mapping[str, Any]) -> bool:
    """One Event per RetrainingSuggested=True transition; True when one was posted."""
    meta, status = body["metadata"], body.get("status") or {}
    cond = find_condition(status.get("conditions"), "RetrainingSuggested")
    if not cond or cond.get("status") != "True":
        return False
    key = (meta["namespace"], meta["name"], cond.get("lastTransitionTime"))
    if key in _state["suggested"]:
        return False
    _state["suggested"].add(key)
    RETRAINING_JOBS.labels(meta["namespace"], meta["name"], "suggest").inc()
    events.emit(body, "RetrainingSuggested", cond.get("message") or cond.get("reason", ""))
    return True


# ----------------------------------------------------------------------------- kopf


@kopf.on.event(*MD)
async def monitoring_event(event: Mapping[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if event.get("type") == "DELETED" or body["metadata"].get("deletionTimestamp"):
        forget_gauges(namespace, name)
        _state["applied"].pop((namespace, name), None)
        return
    await _level(dict(body), memo)


@kopf.timer(*MD, interval=60.0, initial_delay=30.0, idle=0)
async def monitoring_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Catch-up after a failed API call: events are not retried by kopf."""
    await _level(dict(body), memo)


async def _level(body: dict[str, Any], memo: Any) -> None:
    api = api_of(memo)
    status = body.get("status") or {}
    export_gauges(body["metadata"]["namespace"], body["metadata"]["name"], status.get("monitoring"))
    try:
        await ensure_monitor(api, body, _settings(memo))
        await act_on_retraining(api, body)
    except KubeError as exc:
        log.warning("monitoring of %s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], exc)
    note_suggestion(body)


__all__ = ["Window", "retraining_job_name"]
