"""The quickstart's verdict: the checks the demo promises, and the summary a user reads.

Pure: takes the figures the stages produced (a plain dict, also written as summary.json) and
returns the checks and the text. A check that cannot be evaluated because a figure is missing
fails with that reason, it is never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def _get(results: dict, *path: str):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def checks(results: dict) -> list[Check]:
    """What `make demo` promises, each with the figures that prove or disprove it."""
    out: list[Check] = []

    base_em = _get(results, "task", "base", "exactMatch")
    tuned_em = _get(results, "task", "tuned", "exactMatch")
    if base_em is None or tuned_em is None:
        out.append(Check("task score improved", False, "no task score for the base and the tuned model"))
    else:
        out.append(Check("task score improved", tuned_em > base_em,
                         f"exact JSON record {base_em:.2f} (base) -> {tuned_em:.2f} (tuned)"))

    base_loss = _get(results, "evaluation", "metrics", "baseEvalLoss")
    tuned_loss = _get(results, "evaluation", "metrics", "evalLoss")
    if base_loss is None or tuned_loss is None:
        out.append(Check("eval loss improved", False, "manifest.json has no evalLoss/baseEvalLoss"))
    else:
        out.append(Check("eval loss improved", tuned_loss < base_loss,
                         f"held-out loss {base_loss:.3f} (base) -> {tuned_loss:.3f} (tuned)"))

    gates = _get(results, "evaluation", "gates") or []
    if not gates:
        out.append(Check("gates evaluated", False, "no gate results in manifest.json"))
    else:
        passed = sum(bool(g.get("passed")) for g in gates)
        names = ", ".join(f"{g.get('metric')} {g.get('operator')} {g.get('threshold')}: {_fmt(g.get('value'))}"
                          f" {'pass' if g.get('passed') else 'FAIL'}" for g in gates)
        out.append(Check("gates evaluated", passed == len(gates), f"{passed}/{len(gates)} passed ({names})"))

    answered = _get(results, "gateway", "answered") or 0
    sent = _get(results, "gateway", "sent") or 0
    out.append(Check("gateway answered through the openai client", sent > 0 and answered == sent,
                     f"{answered}/{sent} requests answered"))

    normal = _get(results, "monitoring", "normal", "driftDetected")
    shifted = _get(results, "monitoring", "shifted", "driftDetected")
    evaluated = _get(results, "monitoring", "normal", "status") != "insufficient_data"
    out.append(Check("drift detected on shifted traffic only", shifted is True and normal is False and evaluated,
                     f"normal window: {_drift_text(results, 'normal')}; shifted window: {_drift_text(results, 'shifted')}"))

    decision = _get(results, "retraining", "decision")
    detail = "no decision"
    if decision:
        detail = f"{decision} ({_get(results, 'retraining', 'reason')}): {_get(results, 'retraining', 'message') or ''}"
    out.append(Check("retraining decision made", decision is not None, detail.rstrip(": ")))
    return out


def _drift_text(results: dict, window: str) -> str:
    figures = _get(results, "monitoring", window) or {}
    if not figures:
        return "not measured"
    if figures.get("status") == "insufficient_data":
        return f"not evaluated ({figures.get('samples', '?')} samples are too few)"
    verdict = "DRIFT" if figures.get("driftDetected") else "no drift"
    return f"{verdict} ({strongest_signal_text(figures)}; {figures.get('samples', '?')} samples)"


def strongest_signal_text(figures: dict) -> str:
    """The signal closest to drifting, with its p-value and level: why the verdict is what it is."""
    strongest = figures.get("strongest")
    if not strongest:
        return f"share {figures.get('driftShare', 0.0):.2f}"
    return (f"{figures.get('significant', 0)} of {figures.get('signals', 0)} signals significant; smallest p-value "
            f"{strongest['pValue']:.2g} on {strongest['name']}, level {strongest['threshold']:.2g}")


def _task_table(results: dict) -> list[str]:
    base = _get(results, "task", "base") or {}
    tuned = _get(results, "task", "tuned") or {}
    rows = [("valid JSON", "jsonValid"), ("fixed shape", "shapeOk"), ("fields correct", "fieldAccuracy"),
            ("exact record", "exactMatch")]
    lines = [f"  {'held-out prompts (through the gateway)':<40} {'base':>6} {'tuned':>6}"]
    for label, key in rows:
        lines.append(f"  {label:<40} {_fmt(base.get(key), 2):>6} {_fmt(tuned.get(key), 2):>6}")
    return lines


def render(results: dict, checks_: list[Check]) -> str:
    """The text printed at the end and saved as summary.txt."""
    lines = ["", "=" * 78, "kubetune quickstart: summary", "=" * 78]
    for stage in results.get("stages", []):
        status = "ok" if stage.get("ok") else "FAILED"
        lines.append(f"  {stage['name']:<36} {status:<6} {stage.get('seconds', 0):>6.1f} s  {stage.get('detail', '')}")
    lines.append("")
    lines.extend(_task_table(results))
    lines.append("")
    for check in checks_:
        lines.append(f"  [{'PASS' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
    files = results.get("files") or {}
    if files:
        lines.append("")
        lines.append("  where everything is:")
        for label, path in files.items():
            lines.append(f"    {label:<30} {path}")
    total = results.get("seconds")
    if total is not None:
        lines.append("")
        lines.append(f"  total time: {int(total // 60)} min {total % 60:.0f} s")
    lines.append("=" * 78)
    return "\n".join(lines)
