"""Kubernetes Events on a resource's transitions (best effort, never blocks or fails a caller).

Events are posted through the operator's own API client (`configure(api)`, done by
`main.run_operator`), so they work from any task, including the periodic resync, which kopf's
`kopf.event` does not (it only posts from inside a per-object handler). Without a configured
client, `emit` falls back to `kopf.event`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from .conditions import now_rfc3339

log = logging.getLogger(__name__)

COMPONENT = "kubetune-operator"
_state: dict[str, Any] = {"api": None}
_pending: set[asyncio.Task] = set()


def configure(api: Any) -> None:
    """Post events with this KubeApi from now on (None: back to kopf.event)."""
    _state["api"] = api


def render_event(body: Mapping[str, Any], reason: str, message: str, *, warning: bool, now: str) -> dict[str, Any]:
    """A core/v1 Event about `body` (pure)."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", ""),
            "kind": body.get("kind", ""),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def _post(api: Any, event: dict[str, Any]) -> None:
    try:
        await api.create(event, priority=2)
    except Exception as exc:  # events are best effort
        log.debug("could not post event %s: %s", event["reason"], exc)


async def drain(timeout: float = 2.0) -> None:
    """Give queued events a moment to be posted, then drop the rest (at shutdown)."""
    pending = list(_pending)
    if pending:
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


def emit(body: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
    """Post an Event about `body` in the background."""
    api = _state["api"]
    if api is None:
        try:
            kopf.event(dict(body), type="Warning" if warning else "Normal", reason=reason, message=message[:1024])
        except Exception as exc:  # outside an operator context or a broken body
            log.debug("could not post event %s: %s", reason, exc)
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    event = render_event(body, reason, message, warning=warning, now=now_rfc3339())
    task = loop.create_task(_post(api, event))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


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
