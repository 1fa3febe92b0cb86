"""Canary analysis, the pure half: metrics parsing, windows over pods, the checks and the decision.

The metrics text comes from the gateway's own GatewayMetrics registry, so a renamed series or
label fails here. No mocks.
"""

from __future__ import annotations

import random

import pytest

from kubetune.api.modeldeployment import CanaryAnalysis
from kubetune.operator import canary_analysis as ca
from kubetune.serving.metrics import GatewayMetrics

SPEC = CanaryAnalysis(windows=3, min_requests=20, min_feedback=10)


def gateway_text(traffic: dict[str, dict]) -> str:
    """/metrics of a gateway that served `traffic`: adapter -> {ok, errors, ttft, itl, flagged, scored, ratings}."""
    m = GatewayMetrics()
    for adapter, t in traffic.items():
        series = m.for_model("base", adapter)
        m.request_counter("base", adapter, 200).inc(t.get("ok", 0))
        m.request_counter("base", adapter, 502).inc(t.get("errors", 0))
        m.request_counter("base", adapter, 429).inc(t.get("limited", 0))
        for v in t.get("ttft", ()):
            series.ttft.observe(v)
        for v in t.get("itl", ()):
            series.itl.observe(v)
        m.safety_scored.labels(model="base", adapter=adapter, flagged="true").inc(t.get("flagged", 0))
        m.safety_scored.labels(model="base", adapter=adapter, flagged="false").inc(
            t.get("scored", 0) - t.get("flagged", 0))
        for rating, n in t.get("ratings", {}).items():
            m.feedback.labels(model="base", adapter=adapter, rating=str(rating)).inc(n)
    return m.render().decode()


def counts(**t) -> ca.Counts:
    return ca.parse_gateway_metrics(gateway_text({"a": t}))["a"]


def test_the_gateways_metrics_parse_into_counts_per_adapter():
    text = gateway_text({"tone": {"ok": 30, "errors": 2, "limited": 5, "ttft": [0.02] * 30, "scored": 30,
                                  "flagged": 3, "ratings": {-1: 2, 1: 5}},
                         "tone-canary": {"ok": 4, "itl": [0.01, 0.5]}})
    by_adapter = ca.parse_gateway_metrics(text)
    tone, canary = by_adapter["tone"], by_adapter["tone-canary"]
    assert ca.requests(tone) == 32  # 429s are the client's limit, not the model's
    assert tone[("error",)] == 2 and tone[("flagged",)] == 3 and tone[("scored",)] == 30
    assert tone[("rating", -1)] == 2 and tone[("rating", 1)] == 5
    assert tone[("ttft", 0.025)] == 30 and tone[("ttft", float("inf"))] == 30
    assert canary[("itl", 0.01)] == 1 and canary[("itl", float("inf"))] == 2
    with pytest.raises(ca.MetricsFormatError):
        ca.parse_gateway_metrics("kubetune_gateway_requests_total{model= 3\n")


def test_a_window_sums_pods_and_survives_a_restart_and_a_new_pod():
    before = {"p1": {"a": {("ok",): 10.0}}, "p2": {"a": {("ok",): 50.0}}}
    after = {"p1": {"a": {("ok",): 25.0}},  # +15
             "p2": {"a": {("ok",): 4.0}},  # restarted: 4 new
             "p3": {"a": {("ok",): 7.0}}}  # started in the window: 7 new
    assert ca.window_counts(before, after) == {"a": {("ok",): 26.0}}


def test_histogram_quantile_interpolates_like_prometheus():
    bounds = [0.1, 0.2, float("inf")]
    assert ca.histogram_quantile(0.5, bounds, [10, 10, 0]) == pytest.approx(0.1)
    assert ca.histogram_quantile(0.75, bounds, [10, 10, 0]) == pytest.approx(0.15)
    assert ca.histogram_quantile(0.95, bounds, [0, 1, 99]) == 0.2  # past the last bound: the bound
    assert ca.histogram_quantile(0.95, bounds, [0, 0, 0]) is None


def check(window, name):
    return next(c for c in window.checks if c.name == name)


def test_too_little_traffic_leaves_the_window_open():
    assert ca.judge(counts(ok=19), counts(ok=500), SPEC) is None
    assert ca.judge(counts(ok=500), counts(ok=19), SPEC) is None
    assert "19 canary and 500 stable" in ca.waiting_message(counts(ok=19), counts(ok=500), SPEC)


def test_a_canary_like_stable_passes_every_check_or_skips_it():
    same = dict(ok=200, errors=1, ttft=[0.2] * 200, itl=[0.03] * 200, scored=200, flagged=2,
                ratings={1: 30, -1: 5})
    window = ca.judge(counts(**same), counts(**same), SPEC)
    assert window.verdict == "Pass"
    assert {c.name: c.result for c in window.checks} == dict.fromkeys(ca.CHECKS, "Pass")
    unstreamed = ca.judge(counts(ok=50, ttft=[0.2] * 50), counts(ok=50, ttft=[0.2] * 50), SPEC)
    assert check(unstreamed, "itlP95").result == "Skipped" and check(unstreamed, "feedback").result == "Skipped"
    assert unstreamed.verdict == "Pass"


@pytest.mark.parametrize("name, canary, stable", [
    ("errorRate", dict(ok=160, errors=40), dict(ok=200, errors=0)),
    ("ttftP95", dict(ok=200, ttft=[2.0] * 200), dict(ok=200, ttft=[0.2] * 200)),
    ("itlP95", dict(ok=200, itl=[0.15] * 200), dict(ok=200, itl=[0.03] * 200)),
    ("safetyFlagRatio", dict(ok=200, scored=200, flagged=60), dict(ok=200, scored=200, flagged=2)),
    ("feedback", dict(ok=200, ratings={-1: 30, 1: 10}), dict(ok=200, ratings={-1: 5, 1: 35})),
])
def test_each_check_fails_a_canary_that_is_worse_on_it(name, canary, stable):
    window = ca.judge(counts(**canary), counts(**stable), SPEC)
    assert window.verdict == "Fail"
    assert [c.name for c in window.failed] == [name]
    failed = window.failed[0]
    assert failed.p_value < failed.level == pytest.approx(SPEC.alpha / (5 * SPEC.windows))
    # The same figures on the other side: stable is worse, which is no reason to roll back.
    assert ca.judge(counts(**stable), counts(**canary), SPEC).verdict == "Pass"


def test_an_error_in_the_window_does_not_skip_the_latency_and_safety_checks():
    # Judged at exactly minRequests: the canary's one 5xx left 19 TTFTs and 19 safety scores.
    canary = counts(ok=19, errors=1, ttft=[2.0] * 19, scored=19, flagged=0)
    stable = counts(ok=20, ttft=[0.2] * 20, scored=20, flagged=0)
    window = ca.judge(canary, stable, SPEC)
    assert check(window, "ttftP95").result == "Fail"
    assert check(window, "safetyFlagRatio").result == "Pass"
    # Below half of minRequests a check has too little to go on, and says so.
    sparse = ca.judge(counts(ok=20, ttft=[2.0] * 9), stable, SPEC)
    assert check(sparse, "ttftP95").result == "Skipped" and "9 canary" in check(sparse, "ttftP95").message


def test_a_check_needs_both_a_margin_and_significance():
    # 2 errors in 20 is 7.5 points above stable's 2.5%, but at 20 requests that is noise.
    noisy = ca.judge(counts(ok=18, errors=2), counts(ok=1950, errors=50), SPEC)
    assert check(noisy, "errorRate").result == "Pass" and check(noisy, "errorRate").p_value > 0.01
    # 1.5% vs 0.5% at 100,000 requests is significant, but within the 2-point margin.
    big = ca.judge(counts(ok=98500, errors=1500), counts(ok=99500, errors=500), SPEC)
    assert check(big, "errorRate").result == "Pass" and check(big, "errorRate").p_value < 1e-9
    # A millisecond is not "twice as slow", however many requests show it.
    fast = ca.judge(counts(ok=5000, ttft=[0.004] * 5000), counts(ok=5000, ttft=[0.0009] * 5000), SPEC)
    assert check(fast, "ttftP95").result == "Pass"


def test_promote_after_the_needed_windows_roll_back_at_the_first_failure():
    good = ca.judge(counts(ok=50), counts(ok=50), SPEC)
    bad = ca.judge(counts(ok=30, errors=20), counts(ok=50), SPEC)
    assert ca.decide(good, 0, SPEC).action is None
    assert ca.decide(good, 1, SPEC) == ca.Decision(None, 2, "2 of 3 windows passed")
    promoted = ca.decide(good, 2, SPEC)
    assert promoted.action == "promote" and promoted.windows_passed == 3
    rolled = ca.decide(bad, 2, SPEC)
    assert rolled.action == "rollback" and rolled.windows_passed == 0
    assert rolled.reason.startswith("window 3 failed: error rate 0.400 (20/50) vs stable 0.000 (0/50)")


def test_a_canary_as_good_as_stable_is_rarely_rolled_back():
    """Seeded simulation of whole analyses (3 windows of 30 requests per version, same error
    rate, latency and ratings for both): the false rollback rate stays within alpha."""
    rng = random.Random(7)

    def traffic(n):
        errors = sum(rng.random() < 0.05 for _ in range(n))
        ttft = [rng.lognormvariate(-1.5, 0.6) for _ in range(n)]
        ratings = {r: 0 for r in (-1, 0, 1)}
        for _ in range(n):
            ratings[rng.choice((-1, 1, 1, 0))] += 1
        return counts(ok=n - errors, errors=errors, ttft=ttft, scored=n, flagged=sum(rng.random() < 0.1 for _ in range(n)),
                      ratings=ratings)

    spec = CanaryAnalysis(windows=3, min_requests=30, min_feedback=10)
    trials, rolled_back = 150, 0
    for _ in range(trials):
        passed = 0
        while True:
            decision = ca.decide(ca.judge(traffic(30), traffic(30), spec), passed, spec)
            if decision.action:
                rolled_back += decision.action == "rollback"
                break
            passed = decision.windows_passed
    assert rolled_back / trials <= spec.alpha, rolled_back
