"""The retraining policy: pure, so every rule is a unit test and the decision is explainable.

The monitor job evaluates it after each check and records the outcome as conditions on the
ModelDeployment (`RetrainingSuggested`, `RetrainingRequested`); the operator acts on those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Sequence

Action = Literal["none", "suggest", "retrain"]
WEEK = timedelta(days=7)


@dataclass(frozen=True)
class PolicyInput:
    mode: Literal["Never", "Suggest", "Auto"]
    now: datetime
    samples: int
    min_samples: int
    consecutive_drift_checks: int
    persistent_checks: int
    safety_flag_ratio: float | None
    safety_threshold: float
    last_deploy_time: datetime | None
    cooldown_seconds: int
    in_flight: int
    """Retraining FineTuneJobs created for this deployment that have not finished."""
    recent_jobs: Sequence[datetime] = field(default_factory=tuple)
    """Creation times of retraining jobs (any age; only the last 7 days count)."""
    max_per_week: int = 1


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    """CamelCase, for a condition reason: PersistentDrift, SafetyFlags, or why nothing happens."""
    message: str
    trigger: Literal["drift", "safety"] | None = None


def decide(p: PolicyInput) -> Decision:
    """none, suggest or retrain, with the reason; guards are checked in a fixed, documented order."""
    if p.mode == "Never":
        return Decision("none", "RetrainingDisabled", "spec.retraining.mode is Never")

    triggers = []
    if p.consecutive_drift_checks >= p.persistent_checks:
        triggers.append(("drift", "PersistentDrift", f"drift in {p.consecutive_drift_checks} consecutive checks "
                         f"(persistentChecks {p.persistent_checks})"))
    if p.safety_flag_ratio is not None and p.safety_flag_ratio > p.safety_threshold:
        triggers.append(("safety", "SafetyFlags", f"flagged-response ratio {p.safety_flag_ratio:.3f} above "
                         f"{p.safety_threshold}"))
    if not triggers:
        detail = f"drifted checks in a row {p.consecutive_drift_checks}/{p.persistent_checks}"
        if p.safety_flag_ratio is not None:
            detail += f", flagged ratio {p.safety_flag_ratio:.3f} <= {p.safety_threshold}"
        return Decision("none", "NoTrigger", detail)
    trigger, reason, message = triggers[0]
    message = "; ".join(t[2] for t in triggers)

    if p.samples < p.min_samples:
        return Decision("none", "InsufficientSamples", f"{message}, but only {p.samples} samples "
                        f"(retraining.minSamples {p.min_samples})", trigger)
    if p.last_deploy_time is not None:
        since = (p.now - p.last_deploy_time).total_seconds()
        if since < p.cooldown_seconds:
            return Decision("none", "CoolingDown", f"{message}, but the model went live {int(since)} s ago "
                            f"(cooldownSeconds {p.cooldown_seconds})", trigger)
    if p.in_flight > 0:
        return Decision("none", "RetrainingInFlight", f"{message}, but {p.in_flight} retraining job(s) "
                        "still running", trigger)
    this_week = [t for t in p.recent_jobs if p.now - t < WEEK]
    if len(this_week) >= p.max_per_week:
        return Decision("none", "WeeklyCapReached", f"{message}, but {len(this_week)} retraining job(s) in the "
                        f"last 7 days (maxPerWeek {p.max_per_week})", trigger)
    if p.mode == "Suggest":
        return Decision("suggest", reason, message, trigger)
    return Decision("retrain", reason, message, trigger)
