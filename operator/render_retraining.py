"""The FineTuneJob a retraining request creates (pure).

Its name is derived from the deployment and the traffic window, so creating it twice (a retried
handler, an operator restart) finds the first one instead of starting a second training. Its
datasets are the template's plus the window written by the monitor job: the SFT rows, or the
rated preference pairs when the template's objective is dpo or orpo. Labels and annotations
record where it came from and why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api import API_VERSION
from kubetune.api.finetunejob import PREFERENCE_OBJECTIVES

from .render_common import LABEL_MODELDEPLOYMENT, child_name

LABEL_RETRAINED_FROM = "kubetune.io/retrained-from"
LABEL_WINDOW = "kubetune.io/window"
ANNOTATION_TRIGGER = "kubetune.io/retraining-trigger"
ANNOTATION_MESSAGE = "kubetune.io/retraining-message"
ANNOTATION_WINDOW = "kubetune.io/retraining-window"
ANNOTATION_THRESHOLDS = "kubetune.io/retraining-thresholds"
ANNOTATION_MODEL = "kubetune.io/retrained-model"


@dataclass(frozen=True)
class Window:
    id: str
    uri: str
    """The window's training data (alpaca JSON lines), as the monitor job wrote it."""
    preference_uri: str = ""
    """Its rated preference pairs (prompt/chosen/rejected JSON lines)."""


def window_from_report_uri(report_uri: str) -> Window:
    """The monitor job writes `<output>/<windowId>/report.html` next to `window.jsonl`."""
    folder, _, leaf = report_uri.rstrip("/").rpartition("/")
    if leaf != "report.html" or not folder:
        raise ValueError(f"status.monitoring.reportUri {report_uri!r} is not <folder>/<windowId>/report.html")
    wid = folder.rpartition("/")[2]
    if not wid:
        raise ValueError(f"status.monitoring.reportUri {report_uri!r} has no window folder")
    return Window(wid, f"{folder}/window.jsonl", f"{folder}/preferences.jsonl")


def retraining_job_name(deployment: str, window_id: str) -> str:
    return child_name(deployment, f"rt-{window_id}")


def trains_on_preferences(job_spec: Mapping[str, Any]) -> bool:
    return ((job_spec.get("objective") or {}).get("type") or "sft") in PREFERENCE_OBJECTIVES


def window_dataset(job_spec: Mapping[str, Any], window: Window) -> dict[str, Any]:
    """The dataset source the window adds: its rated pairs for a preference objective, else its rows."""
    if trains_on_preferences(job_spec):
        if not window.preference_uri:
            raise ValueError(f"window {window.id} has no preference pairs file")
        return {"name": f"feedback-{window.id}"[:63], "uri": window.preference_uri, "format": "preference"}
    return {"name": f"traffic-{window.id}"[:63], "uri": window.uri, "format": "alpaca"}


def render_retraining_job(
    md: Mapping[str, Any], window: Window, *, trigger: str, message: str
) -> dict[str, Any]:
    """The FineTuneJob manifest; raises ValueError when the deployment has no template."""
    meta = md["metadata"]
    spec = md.get("spec") or {}
    retraining = spec.get("retraining") or {}
    template = retraining.get("template")
    if not template:
        raise ValueError(f"ModelDeployment {meta['name']}: spec.retraining.template is required to retrain")
    tmeta = template.get("metadata") or {}
    job_spec = json.loads(json.dumps(template["spec"]))  # deep copy of plain JSON
    datasets = list(job_spec.get("datasets") or [])
    source = window_dataset(job_spec, window)
    if not any(d.get("name") == source["name"] for d in datasets):
        datasets.append(source)
    job_spec["datasets"] = datasets
    monitoring = spec.get("monitoring") or {}
    thresholds = {
        "alpha": monitoring.get("alpha", 0.05),
        "driftShare": (monitoring.get("thresholds") or {}).get("driftShare"),
        "safetyFlagRatio": (monitoring.get("thresholds") or {}).get("safetyFlagRatio", 0.05),
        "persistentChecks": retraining.get("persistentChecks", 3),
        "minSamples": retraining.get("minSamples", 500),
    }
    labels = dict(tmeta.get("labels") or {})
    labels.update({LABEL_MODELDEPLOYMENT: meta["name"], LABEL_RETRAINED_FROM: meta["name"], LABEL_WINDOW: window.id})
    annotations = dict(tmeta.get("annotations") or {})
    annotations.update({
        ANNOTATION_TRIGGER: trigger,
        ANNOTATION_MESSAGE: message[:2000],
        ANNOTATION_WINDOW: json.dumps({"id": window.id, "uri": source["uri"]}, sort_keys=True),
        ANNOTATION_THRESHOLDS: json.dumps(thresholds, sort_keys=True),
    })
    model_uri = (md.get("status") or {}).get("modelUri")
    if model_uri:
        annotations[ANNOTATION_MODEL] = model_uri
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {
            "name": retraining_job_name(meta["name"], window.id),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }
