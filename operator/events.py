"""Kubernetes Events on a resource's transitions (posted by kopf's event poster)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

log = logging.getLogger(__name__)


def emit(body: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
    """Post an Event about `body`; never fails the caller (events are best effort)."""
    try:
        kopf.event(dict(body), type="Warning" if warning else "Normal", reason=reason, message=message[:1024])
    except Exception as exc:  # outside an operator context or a broken body
        log.debug("could not post event %s: %s", reason, exc)


PHASE_EVENTS = {
    "Provisioning": ("Provisioning", "the training cluster is starting", False),
    "Queued": ("Queued", "waiting for the cluster's queue to admit the job", False),
    "Training": ("Training", "training started", False),
    "Evaluating": ("Evaluating", "evaluating the trained model", False),
    "Succeeded": ("Succeeded", "training, evaluation and export finished", False),
    "Suspended": ("Suspended", "suspended; checkpoints are kept", False),
}


def emit_phase_change(body: Mapping[str, Any], old: str | None, new: str, failure: Mapping[str, Any] | None) -> None:
    """One Event per phase transition; failures carry their real cause."""
    if old == new:
        return
    if new == "Failed":
        failure = failure or {}
        emit(body, failure.get("reason") or "Failed", failure.get("message") or "the job failed", warning=True)
        return
    if new in PHASE_EVENTS:
        reason, message, warning = PHASE_EVENTS[new]
        emit(body, reason, message, warning=warning)
