"""The demo's verdict: each promise checked from the figures, a missing figure fails."""

from __future__ import annotations

from kubetune.quickstart_summary import checks, render


def good_results():
    return {
        "stages": [{"name": "Model initialisation", "ok": True, "seconds": 12.0, "detail": "imported"}],
        "task": {"base": {"jsonValid": 0.1, "shapeOk": 0.0, "fieldAccuracy": 0.1, "exactMatch": 0.0},
                 "tuned": {"jsonValid": 1.0, "shapeOk": 1.0, "fieldAccuracy": 0.95, "exactMatch": 0.8}},
        "evaluation": {"metrics": {"evalLoss": 0.3, "baseEvalLoss": 2.1},
                       "gates": [{"metric": "evalLossDelta", "operator": "<", "threshold": 0, "value": -1.8, "passed": True}]},
        "gateway": {"sent": 96, "answered": 96},
        "monitoring": {"normal": {"driftDetected": False, "driftShare": 0.0, "samples": 40},
                       "shifted": {"driftDetected": True, "driftShare": 0.75, "samples": 40}},
        "retraining": {"decision": "suggest", "reason": "drift share 0.75 >= 0.5"},
        "files": {"artifact": "/tmp/a"},
        "seconds": 421.0,
    }


def by_name(results):
    return {c.name: c for c in checks(results)}


def test_all_promises_kept():
    verdict = by_name(good_results())
    assert all(c.passed for c in verdict.values()), [c for c in verdict.values() if not c.passed]
    assert "0.00 (base) -> 0.80 (tuned)" in verdict["task score improved"].detail
    assert "1/1 passed" in verdict["gates evaluated"].detail


def test_each_broken_promise_fails_its_check():
    cases = {
        "task score improved": lambda r: r["task"]["tuned"].update(exactMatch=0.0),
        "eval loss improved": lambda r: r["evaluation"]["metrics"].update(evalLoss=2.5),
        "gates evaluated": lambda r: r["evaluation"]["gates"][0].update(passed=False),
        "gateway answered through the openai client": lambda r: r["gateway"].update(answered=95),
        "drift detected on shifted traffic only": lambda r: r["monitoring"]["normal"].update(driftDetected=True),
        "retraining decision made": lambda r: r.pop("retraining"),
    }
    for name, breaks in cases.items():
        results = good_results()
        breaks(results)
        verdict = by_name(results)
        assert not verdict[name].passed, name
        assert all(c.passed for n, c in verdict.items() if n != name), name


def test_missing_figures_fail_with_a_reason():
    verdict = by_name({})
    assert not any(c.passed for c in verdict.values())
    assert verdict["eval loss improved"].detail == "manifest.json has no evalLoss/baseEvalLoss"
    assert "not measured" in verdict["drift detected on shifted traffic only"].detail


def test_too_few_samples_is_not_called_no_drift():
    results = good_results()
    results["monitoring"]["normal"] = {"driftDetected": False, "driftShare": 0.0, "samples": 3,
                                       "status": "insufficient_data"}
    check = by_name(results)["drift detected on shifted traffic only"]
    assert not check.passed
    assert "not evaluated (3 samples are too few)" in check.detail


def test_render_shows_table_checks_and_files():
    results = good_results()
    text = render(results, checks(results))
    assert "[PASS] task score improved" in text
    assert "exact record" in text and "0.80" in text
    assert "artifact" in text and "/tmp/a" in text
    assert "total time: 7 min 1 s" in text
    broken = good_results()
    broken["gateway"]["answered"] = 0
    assert "[FAIL] gateway answered" in render(broken, checks(broken))
