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


def test_summary_shape_names_methods_and_thresholds():
    summary = compare(records(300, 1), records(300, 2), DriftOptions(embeddings=False)).summary
    expected = {f"{c}.{d}" for c in ("prompt", "response") for d in ("length", "words", "non_letter", "sentiment")}
    expected |= {"prompt.content", "response.content"}
    assert set(summary["signals"]) == expected
    for name, signal in summary["signals"].items():
        assert set(signal) >= {"score", "method", "drifted", "threshold"}, name
        assert isinstance(signal["drifted"], bool)
        assert signal["method"]
    assert summary["signals"]["prompt.content"]["threshold"] == 0.55
    assert summary["signals"]["prompt.content"]["method"] == "Absolute text content drift"
    assert summary["signals"]["prompt.length"]["method"] == "K-S p_value"  # Evidently's choice up to 1,000 rows
    assert 0.0 <= summary["drift_share"] <= 1.0


def test_signals_equal_evidently_reports_on_the_same_rows():
    """The JSON summary calls Evidently's tests directly; its HTML page runs them in a Report."""
    import pandas as pd

    from kubetune.monitoring.evidently_adapter import TextDrift

    frame = lambda rows: pd.DataFrame(rows)  # noqa: E731
    run = TextDrift(frame(pairs(1100, 5)), frame(pairs(1100, 6, shifted_share=0.3)), ["prompt", "response"])
    ours = {s.name: s for s in run.signals()}
    snapshot = run.report().dict()
    verdicts = {t["metric_config"]["params"]["column"]: t["status"] == "FAIL" for t in snapshot["tests"]}
    theirs = {}
    for metric in snapshot["metrics"]:
        column = metric["config"]["column"]
        theirs[column if "." in column else f"{column}.content"] = (metric["value"], verdicts[column])
    assert set(theirs) == set(ours) and len(ours) == 10
    for name, (value, drifted) in theirs.items():
        assert ours[name].score == pytest.approx(value, abs=1e-9), name
        assert ours[name].drifted is drifted, name
    assert ours["prompt.content"].drifted and ours["prompt.length"].method == "Wasserstein distance (normed)"


def test_insufficient_samples_never_drift():
    shifted = records(50, 3, shifted_share=1.0)
    summary = compare(records(1000, 1), shifted, DriftOptions(min_samples=200)).summary
    assert summary["status"] == "insufficient_samples"
    assert summary["drift_detected"] is False
    assert "insufficient samples" in summary["message"]
    assert summary["signals"] == {}


def test_empty_window_is_insufficient():
    summary = compare(records(500, 1), [], DriftOptions()).summary
    assert summary["status"] == "insufficient_samples" and summary["drift_detected"] is False
    assert summary["samples"]["current"] == 0


def test_large_windows_are_sampled_for_the_statistics_but_counted_whole():
    summary = compare(records(400, 1), records(500, 2), DriftOptions(embeddings=False, max_rows=250)).summary
    assert summary["samples"] == {"reference": 400, "current": 500}
    assert summary["sampled"] == {"reference": 250, "current": 250}
    assert summary["sampling"]["content"] == summary["sampling"]["descriptors"] == summary["sampled"]
    assert summary["safety"]["samples"] == 500


@pytest.mark.parametrize("trial", range(3))
def test_sampled_sentiment_stays_quiet_on_alike_windows_and_counts_its_sample(trial):
    """Sentiment is scored on 1,500 evenly spaced rows per side; alike windows stay far under its threshold."""
    options = DriftOptions(embeddings=False, seed=trial)
    summary = compare(records(3000, 400 + trial), records(3000, 500 + trial), options).summary
    assert summary["sampling"]["sentiment"] == {"reference": 1500, "current": 1500}
    assert summary["drift_detected"] is False, summary["message"]
    for col in ("prompt", "response"):
        signal = summary["signals"][f"{col}.sentiment"]
        assert signal["method"] == "Wasserstein distance (normed)" and signal["threshold"] == 0.1
        assert signal["drifted"] is False and signal["score"] < 0.08, (col, signal)
