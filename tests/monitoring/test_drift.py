"""Drift on synthetic traffic: alike windows stay quiet, a new topic in 30% of prompts is caught."""

from __future__ import annotations

import pytest

from kubetune.monitoring.drift import DriftOptions, compare
from kubetune.monitoring.records import record_from_row
from tests.monitoring.synthetic import pairs

pytestmark = pytest.mark.slow


def records(n, seed, shifted_share=0.0):
    return [record_from_row(r) for r in pairs(n, seed, shifted_share=shifted_share)]


@pytest.mark.parametrize("trial", range(3))
def test_same_distribution_does_not_drift_and_shifted_does(trial):
    reference = records(1200, 100 + trial)
    options = DriftOptions(embeddings=False, seed=trial)
    same = compare(reference, records(1200, 200 + trial), options).summary
    shifted = compare(reference, records(1200, 300 + trial, shifted_share=0.3), options).summary

    assert same["status"] == "ok"
    assert same["drift_detected"] is False, same["message"]
    assert same["signals"]["prompt.content"]["drifted"] is False
    assert shifted["drift_detected"] is True, shifted["message"]
    assert shifted["signals"]["prompt.content"]["drifted"] is True
    assert shifted["signals"]["prompt.content"]["score"] > same["signals"]["prompt.content"]["score"] + 0.1
    assert shifted["samples"] == {"reference": 1200, "current": 1200}


def test_summary_shape_names_methods_p_values_and_levels():
    summary = compare(records(300, 1), records(300, 2), DriftOptions(embeddings=False)).summary
    expected = {f"{c}.{d}" for c in ("prompt", "response") for d in ("length", "words", "non_letter", "sentiment")}
    expected |= {"prompt.content", "response.content"}
    assert set(summary["signals"]) == expected
    for name, signal in summary["signals"].items():
        assert set(signal) >= {"score", "pValue", "method", "drifted", "threshold", "rows"}, name
        assert 0 <= signal["pValue"] <= 1 and signal["drifted"] is (signal["pValue"] <= signal["threshold"]), name
    levels = sorted(s["threshold"] for s in summary["signals"].values())
    assert levels[0] == pytest.approx(0.05 / 10)  # Holm: the smallest p-value is held to alpha/m
    assert summary["signals"]["prompt.content"]["method"] == "domain classifier (TF-IDF), held-out ROC AUC"
    assert summary["signals"]["prompt.content"]["rows"] == {"reference": 150, "current": 150}
    assert summary["signals"]["prompt.length"]["method"] == "K-S"
    assert summary["thresholds"] == {"alpha": 0.05, "driftShare": None, "minSamples": 200}
    assert 0.0 <= summary["drift_share"] <= 1.0


@pytest.mark.parametrize("rows", [20, 100])
def test_small_windows_of_unchanged_traffic_are_rarely_called_drifted(rows):
    """30 windows of one distribution at alpha 0.05: about 1.5 false alarms are expected, the old fixed
    0.55 AUC cut-off raised one in most small windows (bench/drift_calibration.py has 200 per size)."""
    reference = records(600, 7)
    alarms = sum(compare(reference, records(rows, 1000 + i), DriftOptions(embeddings=False, seed=i, min_samples=10))
                 .drift_detected for i in range(30))
    assert alarms <= 5, alarms


def test_alpha_sets_the_levels_and_a_required_share_can_only_make_drift_rarer():
    reference, window = records(400, 8), records(100, 9, shifted_share=0.3)
    loose = compare(reference, window, DriftOptions(embeddings=False, alpha=0.2, min_samples=10)).summary
    strict = compare(reference, window, DriftOptions(embeddings=False, alpha=0.01, min_samples=10)).summary
    assert min(s["threshold"] for s in loose["signals"].values()) == pytest.approx(0.02)
    assert min(s["threshold"] for s in strict["signals"].values()) == pytest.approx(0.001)
    assert loose["drift_detected"] is True
    shared = compare(reference, window, DriftOptions(embeddings=False, alpha=0.2, drift_share=1.0, min_samples=10)).summary
    significant = [n for n, s in shared["signals"].items() if s["drifted"]]
    assert significant and len(significant) < len(shared["signals"])
    # Not all signals are significant, but a column whose only content signal (no embeddings here)
    # is significant still counts as a topic shift.
    topic = any(f"{c}.content" in significant for c in ("prompt", "response"))
    assert shared["drift_detected"] is topic


def test_too_few_rows_for_a_test_are_insufficient_whatever_min_samples_says():
    summary = compare(records(400, 1), records(9, 2, shifted_share=1.0), DriftOptions(min_samples=1)).summary
    assert summary["status"] == "insufficient_data" and summary["drift_detected"] is False
    assert summary["thresholds"]["minSamples"] == 10


def test_descriptor_verdicts_equal_evidently_reports_at_the_same_levels():
    """The HTML page is Evidently's Report of K-S tests at each signal's level: its verdicts are ours."""
    import pandas as pd

    from kubetune.monitoring.evidently_adapter import TextDrift

    frame = lambda rows: pd.DataFrame(rows)  # noqa: E731
    run = TextDrift(frame(pairs(1100, 5)), frame(pairs(1100, 6, shifted_share=0.3)), ["prompt", "response"])
    ours = {s.name: s for s in run.signals()}
    snapshot = run.report({name: 0.01 for name in ours}).dict()
    verdicts = {t["metric_config"]["params"]["column"]: t["status"] == "FAIL" for t in snapshot["tests"]}
    checked = 0
    for metric in snapshot["metrics"]:
        column = metric["config"]["column"]
        if "." not in column:
            continue  # text content: Evidently's own classifier, shown for its typical words
        assert ours[column].p_value == pytest.approx(metric["value"], abs=1e-9), column
        assert (ours[column].p_value <= 0.01) is verdicts[column], column
        checked += 1
    assert checked == 8 and {"prompt", "response"} <= set(verdicts)


def test_insufficient_samples_never_drift():
    shifted = records(50, 3, shifted_share=1.0)
    summary = compare(records(1000, 1), shifted, DriftOptions(min_samples=200)).summary
    assert summary["status"] == "insufficient_data"
    assert summary["drift_detected"] is False
    assert "insufficient data" in summary["message"]
    assert summary["signals"] == {}


def test_empty_window_is_insufficient():
    summary = compare(records(500, 1), [], DriftOptions()).summary
    assert summary["status"] == "insufficient_data" and summary["drift_detected"] is False
    assert summary["samples"]["current"] == 0


def test_large_windows_are_sampled_for_the_statistics_but_counted_whole():
    summary = compare(records(400, 1), records(500, 2), DriftOptions(embeddings=False, max_rows=250)).summary
    assert summary["samples"] == {"reference": 400, "current": 500}
    assert summary["sampled"] == {"reference": 250, "current": 250}
    assert summary["sampling"]["content"] == summary["sampling"]["descriptors"] == summary["sampled"]
    assert summary["safety"]["samples"] == 500


@pytest.mark.parametrize("trial", range(3))
def test_sampled_sentiment_stays_quiet_on_alike_windows_and_counts_its_sample(trial):
    """Sentiment is scored on 1,500 evenly spaced rows per side; alike windows stay quiet."""
    options = DriftOptions(embeddings=False, seed=trial)
    summary = compare(records(3000, 400 + trial), records(3000, 500 + trial), options).summary
    assert summary["sampling"]["sentiment"] == {"reference": 1500, "current": 1500}
    assert summary["drift_detected"] is False, summary["message"]
    for col in ("prompt", "response"):
        signal = summary["signals"][f"{col}.sentiment"]
        assert signal["method"] == "K-S" and signal["rows"] == {"reference": 1500, "current": 1500}
        assert signal["drifted"] is False and signal["pValue"] > signal["threshold"], (col, signal)
