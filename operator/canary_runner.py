"""The I/O half of canary analysis: scrape the gateways, keep each canary's open window.

Every ready pod's gateway answers `/metrics` (counters summed over its workers). The snapshot
at a window's start lives in operator memory, keyed by deployment and canary URI: after an
operator restart the open window starts again, while the passed windows, kept in
status.canary.analysis, count on. The judgement itself is pure (canary_analysis).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import canary_analysis as ca
from .status_serving import CANARY_SUFFIX

SCRAPE_TIMEOUT_SECONDS = 5.0
RECHECK_SECONDS = 15.0
"""While a window lacks traffic, how often to look again (at most; never beyond interval)."""


@dataclass
class _Window:
    uri: str
    started: float  # monotonic
    started_at: str  # RFC 3339, for the status
    snapshot: dict[str, dict[str, ca.Counts]]


@dataclass(frozen=True)
class Step:
    """One reconcile's worth of analysis: the status to show and what to do."""

    status: dict[str, Any]
    action: str | None = None  # promote | rollback
    reason: str = ""
    unreachable: Sequence[str] = field(default_factory=tuple)


_windows: dict[tuple[str, str], _Window] = {}
_due: dict[tuple[str, str], float] = {}
"""(namespace, name) -> monotonic time the next analysis step is due (the resync timer looks)."""


def forget(namespace: str, name: str) -> None:
    _windows.pop((namespace, name), None)
    _due.pop((namespace, name), None)


def reset() -> None:
    _windows.clear()
    _due.clear()


def is_due(namespace: str, name: str) -> bool:
    due = _due.get((namespace, name))
    return due is not None and time.monotonic() >= due


async def scrape(pod_urls: Mapping[str, str]) -> tuple[dict[str, dict[str, ca.Counts]], list[str]]:
    """({pod: counters by adapter}, [pods that did not answer, with why]) from each gateway."""
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
    snapshot: dict[str, dict[str, ca.Counts]] = {}
    failed: list[str] = []
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def one(pod: str, url: str) -> None:
            try:
                async with session.get(url) as resp:
                    if resp.status != 200:
                        failed.append(f"{pod}: HTTP {resp.status} from {url}")
                        return
                    snapshot[pod] = ca.parse_gateway_metrics(await resp.text())
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ca.MetricsFormatError) as exc:
                failed.append(f"{pod}: {url}: {exc or type(exc).__name__}")

        await asyncio.gather(*(one(pod, url) for pod, url in pod_urls.items()))
    return snapshot, sorted(failed)


async def step(namespace: str, name: str, canary: Mapping[str, Any], spec: Any, pod_urls: Mapping[str, str],
               stamp: str) -> Step:
    """Open, extend or judge the canary's window; the returned status replaces canary.analysis."""
    key = (namespace, name)
    adapter, uri = canary["adapter"], canary["uri"]
    previous = dict(canary.get("analysis") or {})
    now = time.monotonic()
    snapshot, failed = await scrape(pod_urls)
    window = _windows.get(key)
    if window is None or window.uri != uri:
        _windows[key] = _Window(uri, now, stamp, snapshot)
        _due[key] = now + spec.interval_seconds
        passed = previous.get("windowsPassed", 0) if window is None else 0
        status = {"windowsPassed": passed, "windowsNeeded": spec.windows, "windowStartTime": stamp,
                  "message": f"window {passed + 1} opened; judged after {spec.interval_seconds}s"}
        if window is None and previous.get("lastWindow"):
            status["lastWindow"] = previous["lastWindow"]
        return Step(status, unreachable=failed)
    base = {"windowsPassed": previous.get("windowsPassed", 0), "windowsNeeded": spec.windows,
            "windowStartTime": window.started_at}
    if previous.get("lastWindow"):
        base["lastWindow"] = previous["lastWindow"]
    if now - window.started < spec.interval_seconds:
        return Step({**base, "message": previous.get("message") or ""}, unreachable=failed)
    counts = ca.window_counts(window.snapshot, snapshot)
    canary_counts, stable_counts = counts.get(adapter + CANARY_SUFFIX, {}), counts.get(adapter, {})
    judged = ca.judge(canary_counts, stable_counts, spec)
    if judged is None:
        _due[key] = now + min(RECHECK_SECONDS, spec.interval_seconds)
        return Step({**base, "message": ca.waiting_message(canary_counts, stable_counts, spec)}, unreachable=failed)
    decision = ca.decide(judged, base["windowsPassed"], spec)
    _windows[key] = _Window(uri, now, stamp, snapshot)
    _due[key] = now + spec.interval_seconds
    status = {"windowsPassed": decision.windows_passed, "windowsNeeded": spec.windows, "windowStartTime": stamp,
              "lastWindow": judged.to_status(stamp), "message": decision.reason}
    return Step(status, decision.action, decision.reason, failed)
