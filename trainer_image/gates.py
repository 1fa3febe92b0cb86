"""Deployment gates: thresholds from the spec checked against measured metrics.

Pure. A gate whose metric could not be measured fails (with value None): a model must never
be promoted because a figure was missing.
"""

from __future__ import annotations

import math
import operator as op
from collections.abc import Iterable, Mapping

from kubetune.api.finetunejob import Gate, GateResult

_COMPARE = {"<": op.lt, "<=": op.le, ">": op.gt, ">=": op.ge}


def evaluate_gate(gate: Gate, metrics: Mapping[str, float | None]) -> GateResult:
    value = metrics.get(gate.metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return GateResult(metric=gate.metric, operator=gate.operator, threshold=gate.threshold, value=None, passed=False)
    value = float(value)
    passed = bool(_COMPARE[gate.operator](value, gate.threshold))
    return GateResult(metric=gate.metric, operator=gate.operator, threshold=gate.threshold, value=value, passed=passed)


def evaluate_gates(gates: Iterable[Gate] | None, metrics: Mapping[str, float | None]) -> list[GateResult]:
    """Each gate with its measured value; a missing (or NaN) metric fails its gate."""
    return [evaluate_gate(g, metrics) for g in (gates or [])]


def all_passed(results: Iterable[GateResult]) -> bool:
    """True when every gate passed (and vacuously when there are none)."""
    return all(r.passed for r in results)


def gates_to_wire(results: Iterable[GateResult]) -> list[dict]:
    """Gate results as in manifest.json and FineTuneJob.status.evaluation.gates.

    `value` stays present (null) when it is missing so readers see why a gate failed.
    """
    out = []
    for r in results:
        wire = r.to_wire()
        wire.setdefault("value", None)
        out.append(wire)
    return out


def describe(result: GateResult) -> str:
    """One line for logs and the model card: `evalLoss <= 2.0: 1.23 (passed)`."""
    shown = "missing" if result.value is None else f"{result.value:.4g}"
    verdict = "passed" if result.passed else "FAILED"
    return f"{result.metric} {result.operator} {result.threshold:g}: {shown} ({verdict})"
