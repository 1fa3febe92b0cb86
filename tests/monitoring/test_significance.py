"""The calibrated tests behind every drift signal: p-values that mean the same thing at every size."""

from __future__ import annotations

import numpy as np
import pytest

from kubetune.monitoring.domain_classifiers import fit_text, fit_vectors
from kubetune.monitoring.significance import (
    EXACT_BELOW,
    MIN_ROWS,
    auc_p_value,
    classifier_test,
    holm,
    ks_test,
)
from tests.monitoring.synthetic import pairs


def test_holm_steps_down_and_stops_at_the_first_pass():
    verdicts = holm({"a": 0.001, "b": 0.013, "c": 0.02, "d": 0.9}, alpha=0.05)
    assert [verdicts[k].level for k in "abcd"] == pytest.approx([0.0125, 0.05 / 3, 0.025, 0.05])
    # b (0.013 <= 0.0167) is rejected after a; c (0.02 <= 0.025) too; d is not.
    assert [verdicts[k].rejected for k in "abcd"] == [True, True, True, False]
    stopped = holm({"a": 0.001, "b": 0.03, "c": 0.031}, alpha=0.05)
    assert [stopped[k].rejected for k in "abc"] == [True, False, False]  # b > 0.025 stops c as well
    assert holm({}, alpha=0.05) == {}
    with pytest.raises(ValueError, match="alpha 1.5"):
        holm({"a": 0.1}, alpha=1.5)


def test_auc_p_value_matches_the_exact_mann_whitney_test_and_counts_ties_half():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=30), rng.normal(0.8, size=12)
    auc, p = auc_p_value(ref, cur, seed=0)
    exact = mannwhitneyu(cur, ref, alternative="greater", method="exact")
    assert auc == pytest.approx(exact.statistic / (30 * 12))
    assert p == pytest.approx(exact.pvalue, abs=0.004)  # 9,999 permutations
    tied_auc, tied_p = auc_p_value(np.zeros(20), np.zeros(15), seed=0)
    assert tied_auc == 0.5 and tied_p == 1.0


def test_auc_p_value_uses_the_normal_approximation_for_large_sides():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(4)
    ref, cur = rng.normal(size=400), rng.normal(0.15, size=EXACT_BELOW + 40)
    _, p = auc_p_value(ref, cur, seed=0)
    expected = mannwhitneyu(cur, ref, alternative="greater", method="asymptotic", use_continuity=True)
    assert p == pytest.approx(expected.pvalue, rel=1e-6)


@pytest.mark.parametrize("n_cur", [10, 40])
def test_held_out_auc_p_values_are_uniform_under_no_drift(n_cur):
    """400 classifier tests on two samples of one distribution: about 5% fall below 0.05, not 30%."""
    rng = np.random.default_rng(n_cur)
    p_values = []
    for seed in range(400):
        ref, cur = rng.normal(size=(200, 8)), rng.normal(size=(n_cur, 8))
        p_values.append(classifier_test(list(ref), list(cur), fit_vectors, seed=seed, method="t").p_value)
    p_values = np.array(p_values)
    assert 0.02 <= np.mean(p_values <= 0.05) <= 0.08, np.mean(p_values <= 0.05)
    assert 0.4 <= np.mean(p_values <= 0.5) <= 0.6


def test_classifier_test_finds_a_new_topic_in_a_small_window():
    def texts(n, seed, shifted):
        return [r["prompt"] for r in pairs(n, seed, shifted_share=shifted)]

    shifted = classifier_test(texts(400, 1, 0.0), texts(40, 2, 0.5), fit_text, seed=0, method="t")
    same = classifier_test(texts(400, 1, 0.0), texts(40, 3, 0.0), fit_text, seed=0, method="t")
    assert shifted.p_value < 0.001 < same.p_value
    assert shifted.statistic > 0.7 and shifted.rows == (200, 20)


def test_classifier_test_refuses_too_few_rows():
    with pytest.raises(ValueError, match=f"at least {MIN_ROWS} rows per side"):
        classifier_test(["a b"] * 50, ["a b"] * (MIN_ROWS - 1), fit_text, seed=0, method="t")


def test_ks_test_drops_non_finite_values_and_refuses_empty_sides():
    result = ks_test([1.0, 2.0, float("nan"), 3.0], [1.0, 2.0, float("inf"), 3.0])
    assert result.statistic == 0.0 and result.p_value == 1.0 and result.rows == (3, 3)
    with pytest.raises(ValueError, match="no finite values"):
        ks_test([float("nan")], [1.0])
