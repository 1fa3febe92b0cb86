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
    assert 0.0 <= summary["drift_share"] <= 1.0


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
    assert summary["safety"]["samples"] == 500
