"""Prometheus metrics of the operator (names as docs/contracts.md lists them).

Registered in the default prometheus_client registry once per process, so every handler
module (FineTuneJob, ModelDeployment, monitoring) exports through the same endpoint.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

FINETUNEJOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs by phase, as the operator last saw them.", ["phase"])
FINETUNEJOB_DURATION = Histogram(
    "kubetune_finetunejob_duration_seconds",
    "Wall time from start to completion of finished FineTuneJobs.",
    buckets=(60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 16 * 3600, 24 * 3600, 48 * 3600, 96 * 3600),
)
RECONCILE_ERRORS = Counter(
    "kubetune_reconcile_errors_total", "Reconciliations that raised, by resource kind.", ["kind"]
)

_lock = threading.Lock()
_phases: dict[tuple[str, str], str] = {}
_timed: set[tuple[str, str, str]] = set()


PHASES = ("Pending", "Queued", "Provisioning", "Training", "Evaluating", "Succeeded", "Failed", "Suspended")
_counts: dict[str, int] = {}


def _refresh() -> None:
    for phase in PHASES:
        FINETUNEJOBS.labels(phase=phase).set(_counts.get(phase, 0))


def _move(old: str | None, new: str | None) -> None:
    """Keep the per-phase counts (O(1) per change: thousands of jobs report at once)."""
    if old == new:
        return
    if old is not None:
        _counts[old] -= 1
        if old in PHASES:
            FINETUNEJOBS.labels(phase=old).set(_counts[old])
    if new is not None:
        _counts[new] = _counts.get(new, 0) + 1
        if new in PHASES:
            FINETUNEJOBS.labels(phase=new).set(_counts[new])


def _initialise() -> None:
    """Export every series at 0 from the start: alerts and rate() need them before the first event."""
    _refresh()
    for kind in ("FineTuneJob", "ModelDeployment"):
        RECONCILE_ERRORS.labels(kind=kind)


def record_finetunejob_phase(namespace: str, name: str, phase: str | None) -> None:
    """Remember a job's phase (None forgets it, e.g. on deletion)."""
    with _lock:
        if phase is None:
            _move(_phases.pop((namespace, name), None), None)
        else:
            _move(_phases.get((namespace, name)), phase)
            _phases[(namespace, name)] = phase


def record_finetunejob_duration(namespace: str, name: str, uid: str, start: str | None, end: str | None) -> None:
    """Observe a finished job's duration once (per uid)."""
    if not start or not end:
        return
    with _lock:
        if (namespace, name, uid) in _timed:
            return
        _timed.add((namespace, name, uid))
    seconds = (_parse(end) - _parse(start)).total_seconds()
    FINETUNEJOB_DURATION.observe(max(0.0, seconds))


def record_reconcile_error(kind: str) -> None:
    RECONCILE_ERRORS.labels(kind=kind).inc()


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on a port (0 disables)."""
    if port:
        start_http_server(port, addr=addr)
        log.info("serving Prometheus metrics on %s:%d", addr, port)


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


_initialise()
