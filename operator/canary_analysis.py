"""Automatic canary analysis: judge a canary against stable from the gateways' own metrics.

Pure: the handler scrapes each pod's gateway `/metrics` and passes the text in. A snapshot is
the cumulative counters per pod and served adapter; a window is the difference of two
snapshots, summed over pods (a pod whose counters went down restarted: its new counts are the
window's). Each window compares the canary (`<adapter>-canary`) with stable (`<adapter>`):

    errorRate        5xx answers / (2xx + 5xx)    one-sided Fisher exact test
    ttftP95          p95 of time to first token   one-sided Mann-Whitney U on the histogram buckets
    itlP95           p95 of inter-token latency   same; only streamed answers are observed
    safetyFlagRatio  flagged / scored answers     one-sided Fisher exact test
    feedback         mean client rating (-1..1)   one-sided Mann-Whitney U on the ratings

A check fails when the canary is worse than stable by more than its margin (spec.rollout.analysis)
*and* the test says so at level alpha / (5 * windows): Bonferroni over every check of every
window, so the whole analysis rolls back a canary as good as stable with probability <= alpha.
A margin alone would roll back on noise at 20 requests; a test alone on trivia at 100,000.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Counts = dict[tuple, float]
"""Cumulative counters of one served adapter: ("ok",), ("error",), ("ttft", le), ("itl", le),
("scored",), ("flagged",), ("rating", r)."""

CHECKS = ("errorRate", "ttftP95", "itlP95", "safetyFlagRatio", "feedback")
QUANTILE = 0.95
LATENCY_FLOOR_SECONDS = {"ttftP95": 0.05, "itlP95": 0.005}
"""A latency increase below this is never a failure, whatever the ratio: bucket widths at the
fast end would otherwise turn a millisecond into "twice as slow"."""


class MetricsFormatError(ValueError):
    """The text is not Prometheus exposition format."""


def parse_gateway_metrics(text: str) -> dict[str, Counts]:
    """Counters per served adapter ("" for the base model) from one gateway's /metrics."""
    out: dict[str, Counts] = {}

    def add(adapter: str, key: tuple, value: float) -> None:
        counts = out.setdefault(adapter, {})
        counts[key] = counts.get(key, 0.0) + value

    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError) as exc:
        raise MetricsFormatError(f"not Prometheus text format: {exc}") from None
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            adapter = labels.get("adapter", "")
            if name == "kubetune_gateway_requests_total":
                status = labels.get("status", "")
                if status.startswith("2"):
                    add(adapter, ("ok",), value)
                elif status.startswith("5"):
                    add(adapter, ("error",), value)
            elif name in ("kubetune_gateway_ttft_seconds_bucket", "kubetune_gateway_itl_seconds_bucket"):
                kind = "ttft" if "ttft" in name else "itl"
                add(adapter, (kind, _bound(labels.get("le", "+Inf"))), value)
            elif name == "kubetune_gateway_safety_scored_total":
                add(adapter, ("scored",), value)
                if labels.get("flagged") == "true":
                    add(adapter, ("flagged",), value)
            elif name == "kubetune_gateway_feedback_total":
                try:
                    add(adapter, ("rating", int(labels.get("rating", ""))), value)
                except ValueError:
                    continue
    return out


def _bound(le: str) -> float:
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def window_counts(before: Mapping[str, Mapping[str, Counts]], after: Mapping[str, Mapping[str, Counts]]) -> dict[str, Counts]:
    """Per served adapter, what the pods counted between two snapshots ({pod: {adapter: Counts}}).

    A pod absent from `before` started within the window: all its counts are new. A pod with
    any counter lower than before restarted: its current counts are the window's.
    """
    out: dict[str, Counts] = {}
    for pod, now in after.items():
        then = before.get(pod, {})
        restarted = any(value < then.get(adapter, {}).get(key, 0.0)
                        for adapter, counts in now.items() for key, value in counts.items()) or any(
            adapter not in now for adapter in then)
        for adapter, counts in now.items():
            base = {} if restarted else then.get(adapter, {})
            acc = out.setdefault(adapter, {})
            for key, value in counts.items():
                acc[key] = acc.get(key, 0.0) + value - base.get(key, 0.0)
    return out


# ----------------------------------------------------------------------------- figures


def requests(counts: Counts) -> int:
    return int(counts.get(("ok",), 0) + counts.get(("error",), 0))


def _buckets(counts: Counts, kind: str) -> tuple[list[float], list[int]]:
    """(upper bounds, per-bucket counts), ascending; from the cumulative `le` series."""
    bounds = sorted(key[1] for key in counts if key[0] == kind)
    cumulative = [counts[(kind, b)] for b in bounds]
    per = [int(round(c - p)) for c, p in zip(cumulative, [0.0, *cumulative[:-1]])]
    return bounds, [max(0, n) for n in per]


def histogram_quantile(q: float, bounds: list[float], per_bucket: list[int]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket, the highest finite bound past it."""
    total = sum(per_bucket)
    if total == 0:
        return None
    rank = q * total
    seen = 0.0
    for i, (upper, n) in enumerate(zip(bounds, per_bucket)):
        if seen + n >= rank and n > 0:
            if math.isinf(upper):
                return bounds[i - 1] if i > 0 else None
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    finite = [b for b in bounds if not math.isinf(b)]
    return finite[-1] if finite else None


# ----------------------------------------------------------------------------- tests


def _fisher_greater(bad_c: int, good_c: int, bad_s: int, good_s: int) -> float:
    """P(the canary's bad share is this high or higher) if both versions were the same."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[bad_c, good_c], [bad_s, good_s]], alternative="greater").pvalue)


def _mannwhitney(canary: list[int], stable: list[int], alternative: str) -> float:
    """One-sided Mann-Whitney U on samples given as counts per ordered value (bucket or rating)."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    values = np.arange(len(canary))
    x, y = np.repeat(values, canary), np.repeat(values, stable)
    if len(x) == 0 or len(y) == 0 or len(set(x.tolist()) | set(y.tolist())) < 2:
        return 1.0  # all observations equal: nothing tells the versions apart
    return float(mannwhitneyu(x, y, alternative=alternative, method="asymptotic").pvalue)


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # Pass | Fail | Skipped
    canary: float | None = None
    stable: float | None = None
    p_value: float | None = None
    level: float | None = None
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "result": self.result, "message": self.message}
        for key, value in (("canary", self.canary), ("stable", self.stable), ("pValue", self.p_value),
                           ("level", self.level)):
            if value is not None:
                out[key] = _round(value)
        return out


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _proportion_check(name: str, what: str, bad_c: int, n_c: int, bad_s: int, n_s: int, margin: float,
                      level: float, minimum: int) -> Check:
    if n_c < minimum or n_s < minimum:
        return Check(name, "Skipped", message=f"{what}: {n_c} canary and {n_s} stable observations, "
                                              f"{minimum} each needed")
    rc, rs = bad_c / n_c, bad_s / n_s
    p = _fisher_greater(bad_c, n_c - bad_c, bad_s, n_s - bad_s)
    worse = rc - rs > margin and p < level
    text = (f"{what} {rc:.3f} ({bad_c}/{n_c}) vs stable {rs:.3f} ({bad_s}/{n_s}); allowed increase {margin:g}, "
            f"p={p:.3g} vs level {level:.3g}")
    return Check(name, "Fail" if worse else "Pass", rc, rs, p, level, text)


def _latency_check(name: str, what: str, canary: Counts, stable: Counts, kind: str, ratio: float, level: float,
                   minimum: int) -> Check:
    bounds_c, per_c = _buckets(canary, kind)
    bounds_s, per_s = _buckets(stable, kind)
    n_c, n_s = sum(per_c), sum(per_s)
    if n_c < minimum or n_s < minimum:
        return Check(name, "Skipped", message=f"{what}: {n_c} canary and {n_s} stable observations, "
                                              f"{minimum} each needed")
    if bounds_c != bounds_s:
        return Check(name, "Skipped", message=f"{what}: the two versions' histograms have different buckets")
    qc, qs = histogram_quantile(QUANTILE, bounds_c, per_c), histogram_quantile(QUANTILE, bounds_s, per_s)
    p = _mannwhitney(per_c, per_s, "greater")
    limit = max(ratio * qs, qs + LATENCY_FLOOR_SECONDS[name])
    worse = qc > limit and p < level
    text = (f"{what} p95 {qc * 1000:.1f} ms vs stable {qs * 1000:.1f} ms; allowed {limit * 1000:.1f} ms "
            f"({ratio:g}x), p={p:.3g} vs level {level:.3g}")
    return Check(name, "Fail" if worse else "Pass", qc, qs, p, level, text)


def _feedback_check(canary: Counts, stable: Counts, drop: float, level: float, minimum: int) -> Check:
    ratings = (-1, 0, 1)
    per_c = [int(canary.get(("rating", r), 0)) for r in ratings]
    per_s = [int(stable.get(("rating", r), 0)) for r in ratings]
    n_c, n_s = sum(per_c), sum(per_s)
    if n_c < minimum or n_s < minimum:
        return Check("feedback", "Skipped", message=f"feedback: {n_c} canary and {n_s} stable ratings, "
                                                    f"{minimum} each needed")
    mc = sum(r * n for r, n in zip(ratings, per_c)) / n_c
    ms = sum(r * n for r, n in zip(ratings, per_s)) / n_s
    p = _mannwhitney(per_c, per_s, "less")
    worse = ms - mc > drop and p < level
    text = (f"mean rating {mc:+.2f} ({n_c} ratings) vs stable {ms:+.2f} ({n_s}); allowed drop {drop:g}, "
            f"p={p:.3g} vs level {level:.3g}")
    return Check("feedback", "Fail" if worse else "Pass", mc, ms, p, level, text)


@dataclass(frozen=True)
class Window:
    """A judged window; `verdict` is Pass or Fail."""

    verdict: str
    canary_requests: int
    stable_requests: int
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.result == "Fail"]

    def to_status(self, end_time: str) -> dict[str, Any]:
        return {"verdict": self.verdict, "endTime": end_time, "canaryRequests": self.canary_requests,
                "stableRequests": self.stable_requests, "checks": [c.to_status() for c in self.checks]}


def check_level(spec: Any) -> float:
    """The level each test is held to: alpha over every check of every window."""
    return spec.alpha / (len(CHECKS) * spec.windows)


def observations_needed(spec: Any) -> int:
    """What a latency or safety check needs of each version: half of minRequests.

    Those checks see only the answers that succeeded (TTFT, safety scores) or streamed (ITL),
    so asking them for the full minRequests would skip them whenever a window held one error.
    """
    return max(1, math.ceil(spec.min_requests / 2))


def judge(canary: Counts, stable: Counts, spec: Any) -> Window | None:
    """The window's verdict, or None while either version has fewer than minRequests requests."""
    n_c, n_s = requests(canary), requests(stable)
    if n_c < spec.min_requests or n_s < spec.min_requests:
        return None
    level = check_level(spec)
    observed = observations_needed(spec)
    checks = [
        _proportion_check("errorRate", "error rate", int(canary.get(("error",), 0)), n_c,
                          int(stable.get(("error",), 0)), n_s, spec.max_error_rate_increase, level, observed),
        _latency_check("ttftP95", "TTFT", canary, stable, "ttft", spec.max_latency_ratio, level, observed),
        _latency_check("itlP95", "inter-token latency", canary, stable, "itl", spec.max_latency_ratio, level,
                       observed),
        _proportion_check("safetyFlagRatio", "safety flag ratio", int(canary.get(("flagged",), 0)),
                          int(canary.get(("scored",), 0)), int(stable.get(("flagged",), 0)),
                          int(stable.get(("scored",), 0)), spec.max_safety_flag_increase, level, observed),
        _feedback_check(canary, stable, spec.max_feedback_drop, level, spec.min_feedback),
    ]
    verdict = "Fail" if any(c.result == "Fail" for c in checks) else "Pass"
    return Window(verdict, n_c, n_s, checks)


def waiting_message(canary: Counts, stable: Counts, spec: Any) -> str:
    return (f"window open: {requests(canary)} canary and {requests(stable)} stable requests so far, "
            f"{spec.min_requests} each needed")


@dataclass(frozen=True)
class Decision:
    """What one judged window means for the canary."""

    action: str | None  # "promote" | "rollback" | None (keep going)
    windows_passed: int
    reason: str


def decide(window: Window, windows_passed: int, spec: Any) -> Decision:
    if window.verdict == "Fail":
        why = "; ".join(c.message for c in window.failed)
        return Decision("rollback", 0, f"window {windows_passed + 1} failed: {why}")
    passed = windows_passed + 1
    if passed >= spec.windows:
        return Decision("promote", passed, f"{passed} of {spec.windows} windows passed "
                                           f"({window.canary_requests} canary requests in the last)")
    return Decision(None, passed, f"{passed} of {spec.windows} windows passed")
