"""Each rule of the retraining policy, one at a time, from a baseline that retrains."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from kubetune.monitoring.policy import PolicyInput, decide

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
BASE = PolicyInput(
    mode="Auto", now=NOW, samples=1000, min_samples=500, consecutive_drift_checks=3, persistent_checks=3,
    safety_flag_ratio=0.01, safety_threshold=0.05, last_deploy_time=NOW - timedelta(days=3),
    cooldown_seconds=86400, in_flight=0, recent_jobs=(), max_per_week=1,
)


def test_baseline_retrains_on_persistent_drift():
    d = decide(BASE)
    assert (d.action, d.reason, d.trigger) == ("retrain", "PersistentDrift", "drift")
    assert "3 consecutive" in d.message


def test_never_mode_does_nothing():
    assert decide(replace(BASE, mode="Never")).action == "none"


def test_suggest_mode_only_suggests():
    d = decide(replace(BASE, mode="Suggest"))
    assert (d.action, d.reason) == ("suggest", "PersistentDrift")


def test_drift_must_persist_for_n_checks():
    d = decide(replace(BASE, consecutive_drift_checks=2))
    assert (d.action, d.reason) == ("none", "NoTrigger")
    assert "2/3" in d.message


def test_safety_over_threshold_triggers_without_drift():
    d = decide(replace(BASE, consecutive_drift_checks=0, safety_flag_ratio=0.2))
    assert (d.action, d.reason, d.trigger) == ("retrain", "SafetyFlags", "safety")


def test_safety_at_threshold_does_not_trigger():
    assert decide(replace(BASE, consecutive_drift_checks=0, safety_flag_ratio=0.05)).action == "none"


def test_minimum_samples():
    d = decide(replace(BASE, samples=499))
    assert (d.action, d.reason) == ("none", "InsufficientSamples")


def test_cooldown_since_last_deploy():
    d = decide(replace(BASE, last_deploy_time=NOW - timedelta(hours=2)))
    assert (d.action, d.reason) == ("none", "CoolingDown")
    assert decide(replace(BASE, last_deploy_time=NOW - timedelta(seconds=86400))).action == "retrain"


def test_one_job_in_flight_at_most():
    d = decide(replace(BASE, in_flight=1))
    assert (d.action, d.reason) == ("none", "RetrainingInFlight")


@pytest.mark.parametrize(
    ("ages_days", "cap", "action"),
    [((1,), 1, "none"), ((8,), 1, "retrain"), ((1, 2), 3, "retrain"), ((1, 2, 3), 3, "none"), ((), 0, "none")],
)
def test_weekly_cap(ages_days, cap, action):
    jobs = tuple(NOW - timedelta(days=a) for a in ages_days)
    d = decide(replace(BASE, recent_jobs=jobs, max_per_week=cap))
    assert d.action == action
    if action == "none":
        assert d.reason == "WeeklyCapReached"


def test_guards_also_hold_back_suggestions():
    assert decide(replace(BASE, mode="Suggest", in_flight=1)).action == "none"
