"""The in-cluster monitor job: one check of one ModelDeployment, written to its status.

Reads the ModelDeployment, the served artifact's reference profile and the payload log window;
writes report.html, summary.json and window.jsonl (the redacted window as training data) to
`<output>/<windowId>/`; patches `status.monitoring` and the `Drifted`, `RetrainingSuggested` and
`RetrainingRequested` conditions. The operator reads `RetrainingRequested` and creates the
FineTuneJob; this job's ServiceAccount may only get its ModelDeployment (and FineTuneJobs, to see
whether a retraining job is still running) and patch that ModelDeployment's status.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from kubetune.api import GROUP, VERSION, ManifestError, parse_modeldeployment
from kubetune.api.uris import local_path

from .cli import EXIT_ERROR, EXIT_OK, options_from, report_loads

PLURAL = "modeldeployments"
TERMINAL_PHASES = {"Succeeded", "Failed", "Cancelled"}
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def merge_conditions(current: list[dict] | None, updates: list[dict], now: str) -> list[dict]:
    """Conditions with `updates` applied; lastTransitionTime moves only when status changes."""
    out = [dict(c) for c in (current or [])]
    for new in updates:
        old = next((c for c in out if c.get("type") == new["type"]), None)
        entry = dict(new)
        entry["lastTransitionTime"] = (
            old["lastTransitionTime"] if old and old.get("status") == new["status"] and old.get("lastTransitionTime") else now
        )
        if old is None:
            out.append(entry)
        else:
            out[out.index(old)] = entry
    return out


def _condition(type_: str, status: str, reason: str, message: str, generation: Any) -> dict:
    cond = {"type": type_, "status": status, "reason": reason, "message": message[:32000]}
    if isinstance(generation, int):
        cond["observedGeneration"] = generation
    return cond


def _api(kubeconfig: str | None):
    from kubernetes import client, config

    if kubeconfig:
        return client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def _in_flight(api, namespace: str, status: dict, log: Callable[[str], None]) -> int:
    """1 when the last retraining job exists and has not finished."""
    from kubernetes.client.exceptions import ApiException

    name = status.get("lastRetrainJob")
    if not name:
        return 0
    try:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
    except ApiException as exc:
        if exc.status == 404:
            return 0
        log(f"cannot read FineTuneJob {name} ({exc.status} {exc.reason}); counting it as in flight")
        return 1
    phase = (job.get("status") or {}).get("phase")
    return 0 if phase in TERMINAL_PHASES else 1


def run_in_cluster(
    args: argparse.Namespace,
    log: Callable[[str], None],
    *,
    api: Any = None,
    now: datetime | None = None,
) -> int:
    from kubernetes.client.exceptions import ApiException

    from .drift import compare
    from .files import atomic_write_json
    from .policy import PolicyInput, decide
    from .records import load, load_many
    from .reference import ReferenceMissing, reference_file
    from .window import PREFERENCES_FILE, feedback_figures, window_id, write_window

    now = now or datetime.now(timezone.utc)
    stamp = rfc3339(now)
    namespace = args.namespace or (NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.exists() else "default")
    name = args.deployment
    api = api or _api(args.kubeconfig)
    try:
        body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        log(f"cannot read ModelDeployment {namespace}/{name}: {exc.status} {exc.reason}")
        return EXIT_ERROR
    try:
        md = parse_modeldeployment({k: v for k, v in body.items() if k != "status"})
    except ManifestError as exc:
        log(f"ModelDeployment {namespace}/{name} is invalid: {exc}")
        return EXIT_ERROR
    status = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    mon_spec, rt_spec = md.spec.monitoring, md.spec.retraining

    def write_status(monitoring: dict | None, conditions: list[dict]) -> None:
        patch: dict[str, Any] = {"conditions": merge_conditions(status.get("conditions"), conditions, stamp)}
        if monitoring is not None:
            patch["monitoring"] = monitoring
        api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": patch})

    model_uri = status.get("modelUri") or md.spec.model.uri
    if not model_uri:
        log(f"{namespace}/{name} serves no model yet (status.modelUri is empty); nothing to compare")
        write_status(None, [_condition("Drifted", "Unknown", "NoModel", "no model is served yet", generation)])
        return EXIT_OK
    try:
        ref_path = reference_file(local_path(model_uri))
        reference = load(ref_path)
    except (ReferenceMissing, ValueError) as exc:
        log(f"error: {exc}")
        write_status(None, [_condition("Drifted", "Unknown", "ReferenceMissing", f"{model_uri}: {exc}", generation)])
        return EXIT_ERROR

    since = now - timedelta(seconds=mon_spec.window_seconds)
    current = load_many([Path(args.log_dir)], since=since)
    options = options_from(args, min_samples=mon_spec.min_samples, drift_share=mon_spec.thresholds.drift_share,
                           alpha=mon_spec.alpha)
    log(f"{namespace}/{name}: reference {len(reference.records)} pairs from {ref_path}, "
        f"window {len(current.records)} pairs since {rfc3339(since)}")
    result = compare(reference.records, current.records, options)
    summary = result.summary
    report_loads(summary, "reference", reference)
    report_loads(summary, "current", current)

    wid = window_id(rfc3339(since), stamp)
    out_dir = Path(args.output_dir or Path(args.log_dir) / "monitoring") / wid
    out_uri = f"{args.output_uri.rstrip('/')}/{wid}" if args.output_uri else str(out_dir)
    window = write_window(current.records, out_dir / "window.jsonl")
    summary["window"] = {"id": wid, "start": rfc3339(since), "end": stamp, "uri": f"{out_uri}/window.jsonl",
                         "rows": window.rows, "digest": window.digest, "excludedFlagged": window.excluded_flagged,
                         "excludedNegative": window.excluded_negative,
                         "preferenceUri": f"{out_uri}/{PREFERENCES_FILE}", "preferencePairs": window.preference_pairs}
    summary["feedback"] = {**feedback_figures(current.records), "preferencePairs": window.preference_pairs}
    result.write_html(out_dir / "report.html")

    # Consecutive drifted checks: a new deploy since the last check starts the count again (the
    # reference moved to the new model's data); an insufficient window neither adds nor resets.
    previous = status.get("monitoring") or {}
    count = int(previous.get("consecutiveDriftChecks") or 0)
    last_check, last_deploy = parse_time(previous.get("lastCheckTime")), parse_time(status.get("lastDeployTime"))
    if last_deploy and (last_check is None or last_deploy > last_check):
        count = 0
    insufficient = summary["status"] == "insufficient_data"
    if not insufficient:
        count = count + 1 if summary["drift_detected"] else 0

    safety = summary["safety"]
    monitoring = {
        "driftDetected": bool(summary["drift_detected"]),
        "driftShare": summary["drift_share"],
        "driftScores": {k: v["score"] for k, v in summary["signals"].items() if v["score"] is not None},
        "driftPValues": {k: v["pValue"] for k, v in summary["signals"].items() if v.get("pValue") is not None},
        "driftThresholds": {k: v["threshold"] for k, v in summary["signals"].items() if v.get("threshold") is not None},
        "verdict": "InsufficientData" if insufficient else "Drift" if summary["drift_detected"] else "NoDrift",
        "safetyFlagRatio": safety["flagRatio"],
        "piiLeakRatio": safety["piiLeakRatio"],
        "refusalRatio": safety["refusalRatio"],
        "samples": len(current.records),
        "consecutiveDriftChecks": count,
        "lastCheckTime": stamp,
        "reportUri": f"{out_uri}/report.html",
        "feedback": {k: v for k, v in summary["feedback"].items() if v is not None},
    }
    monitoring = {k: v for k, v in monitoring.items() if v is not None}

    if insufficient:
        drifted = _condition("Drifted", "Unknown", "InsufficientData", summary["message"], generation)
    elif summary["drift_detected"]:
        drifted = _condition("Drifted", "True", "DriftDetected", summary["message"], generation)
    else:
        drifted = _condition("Drifted", "False", "NoDrift", summary["message"], generation)

    decision = decide(
        PolicyInput(
            mode=rt_spec.mode,
            now=now,
            samples=0 if insufficient else len(current.records),
            min_samples=rt_spec.min_samples,
            consecutive_drift_checks=count,
            persistent_checks=rt_spec.persistent_checks,
            safety_flag_ratio=None if insufficient else safety["flagRatio"],
            safety_threshold=mon_spec.thresholds.safety_flag_ratio,
            last_deploy_time=last_deploy,
            cooldown_seconds=rt_spec.cooldown_seconds,
            in_flight=_in_flight(api, namespace, status, log) if rt_spec.mode != "Never" else 0,
            recent_jobs=[t for t in (parse_time(x) for x in status.get("retrainJobs") or []) if t],
            max_per_week=rt_spec.max_per_week,
        )
    )
    summary["retraining"] = {"action": decision.action, "reason": decision.reason, "message": decision.message}
    atomic_write_json(out_dir / "summary.json", summary)

    conditions = [drifted]
    conditions.append(_condition("RetrainingSuggested", "True" if decision.action == "suggest" else "False",
                                 decision.reason, decision.message, generation))
    if decision.action == "retrain":
        conditions.append(_condition("RetrainingRequested", "True", decision.reason,
                                     f"{decision.message}; window {wid} ({summary['window']['uri']})", generation))
    elif mon_requested_open(status):
        pass  # a request the operator has not taken yet stays until it does
    else:
        conditions.append(_condition("RetrainingRequested", "False", decision.reason, decision.message, generation))
    write_status(monitoring, conditions)
    log(f"{summary.get('message', '')}; retraining: {decision.action} ({decision.reason})")
    return EXIT_OK


def mon_requested_open(status: dict) -> bool:
    return any(
        c.get("type") == "RetrainingRequested" and c.get("status") == "True" for c in status.get("conditions") or []
    )
