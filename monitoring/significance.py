"""Calibrated drift tests: a p-value per signal and a family-wise level per window.

A fixed cut-off on a drift score (an ROC AUC above 0.55, a Wasserstein distance above 0.1) means
a different false-alarm rate at every window size: at 20 rows the AUC of a domain classifier on
two samples of one distribution often exceeds 0.55, at 5,000 it almost never does. Each signal
here is a hypothesis test instead, so its p-value means the same thing at every size:

- a descriptor (length, words, ...) by the two-sample Kolmogorov-Smirnov test, exact for small
  samples (SciPy picks the exact distribution up to 10,000 rows per side); ties in discrete
  descriptors make it conservative, never liberal;
- a domain classifier (TF-IDF words, sentence embeddings) by its ROC AUC on held-out rows. The
  classifier is fitted on one half of a stratified split and scores the other half; under "no
  drift" its scores are independent of the held-out labels, so the held-out AUC has the
  Mann-Whitney null distribution. Its p-value comes from a seeded permutation of the held-out
  labels when the smaller side is small, the tie-corrected normal approximation otherwise.

`holm` turns the p-values of one window into verdicts with a family-wise false-alarm rate of at
most `alpha` whatever the dependence between signals (length and word count move together).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

PERMUTATIONS = 9_999
"""Label permutations for a small held-out set: p-values resolve to 1e-4, well below the
per-signal levels of a 12-signal window at alpha 0.05 (0.0042 and up)."""
EXACT_BELOW = 60
"""Held-out rows of the smaller side below which the AUC's p-value is by permutation."""
MIN_ROWS = 10
"""Rows per side below which no test is run: half of them train the classifier, half test it."""


@dataclass(frozen=True)
class TestResult:
    statistic: float
    """The effect: K-S distance, or the held-out ROC AUC (0.5 = indistinguishable)."""
    p_value: float
    method: str
    rows: tuple[int, int]
    """Rows the p-value is computed on (reference, current): held-out rows for a classifier."""


def ks_test(reference: Sequence[float], current: Sequence[float]) -> TestResult:
    """Two-sample K-S on finite values (exact distribution up to 10,000 rows per side)."""
    from scipy.stats import ks_2samp

    ref = _finite(reference)
    cur = _finite(current)
    if min(len(ref), len(cur)) == 0:
        raise ValueError("no finite values to compare")
    with warnings.catch_warnings():  # SciPy falls back to the asymptotic p-value where the exact one fails
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful")
        result = ks_2samp(ref, cur, alternative="two-sided", method="auto")
    return TestResult(float(result.statistic), float(result.pvalue), "K-S", (len(ref), len(cur)))


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def auc_p_value(reference_scores: np.ndarray, current_scores: np.ndarray, *, seed: int) -> tuple[float, float]:
    """ROC AUC of `current` ranked above `reference`, and its one-sided p-value under exchangeability."""
    from scipy.stats import rankdata

    ref = np.asarray(reference_scores, dtype=float)
    cur = np.asarray(current_scores, dtype=float)
    n0, n1 = len(ref), len(cur)
    ranks = rankdata(np.concatenate([ref, cur]))  # average ranks: ties count half
    u_stat = ranks[n0:].sum() - n1 * (n1 + 1) / 2
    auc = u_stat / (n0 * n1)
    if min(n0, n1) < EXACT_BELOW:
        return auc, _permutation_p(ranks, n1, u_stat, seed)
    return auc, _normal_p(ranks, n0, n1, u_stat)


def _permutation_p(ranks: np.ndarray, n1: int, u_stat: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    total = len(ranks)
    exceed = 0
    done = 0
    while done < PERMUTATIONS:  # in blocks, so 10k permutations of a few thousand rows stay small
        block = min(2_000, PERMUTATIONS - done)
        picks = np.argsort(rng.random((block, total)), axis=1)[:, :n1]
        u_perm = ranks[picks].sum(axis=1) - n1 * (n1 + 1) / 2
        exceed += int(np.count_nonzero(u_perm >= u_stat - 1e-9))
        done += block
    return (exceed + 1) / (PERMUTATIONS + 1)


def _normal_p(ranks: np.ndarray, n0: int, n1: int, u_stat: float) -> float:
    from scipy.stats import norm

    total = n0 + n1
    _, counts = np.unique(ranks, return_counts=True)
    tie_term = float((counts**3 - counts).sum()) / (total * (total - 1))
    variance = n0 * n1 / 12 * ((total + 1) - tie_term)
    if variance <= 0:
        return 1.0  # every score tied: the classifier learned nothing
    z = (u_stat - n0 * n1 / 2 - 0.5) / math.sqrt(variance)  # continuity-corrected
    return float(norm.sf(z))


Fit = Callable[[Sequence, np.ndarray, int], Callable[[Sequence], np.ndarray]]
"""fit(rows, labels, seed) -> score(rows): higher means more like the current window."""


def classifier_test(reference: Sequence, current: Sequence, fit: Fit, *, seed: int, method: str) -> TestResult:
    """Held-out ROC AUC of a domain classifier and its p-value (module docstring)."""
    if min(len(reference), len(current)) < MIN_ROWS:
        raise ValueError(f"at least {MIN_ROWS} rows per side are needed, got {len(reference)} and {len(current)}")
    rng = np.random.default_rng(seed)
    ref_idx = rng.permutation(len(reference))
    cur_idx = rng.permutation(len(current))
    ref_train, ref_test = ref_idx[: len(ref_idx) // 2], ref_idx[len(ref_idx) // 2:]
    cur_train, cur_test = cur_idx[: len(cur_idx) // 2], cur_idx[len(cur_idx) // 2:]
    rows = [reference[i] for i in ref_train] + [current[i] for i in cur_train]
    labels = np.concatenate([np.zeros(len(ref_train), dtype=int), np.ones(len(cur_train), dtype=int)])
    score = fit(rows, labels, seed)
    ref_scores = score([reference[i] for i in ref_test])
    cur_scores = score([current[i] for i in cur_test])
    auc, p_value = auc_p_value(ref_scores, cur_scores, seed=seed)
    return TestResult(float(auc), float(p_value), method, (len(ref_test), len(cur_test)))


@dataclass(frozen=True)
class Verdict:
    level: float
    """The level this signal's p-value was held to (Holm's step at its rank)."""
    rejected: bool


def holm(p_values: Mapping[str, float], alpha: float) -> dict[str, Verdict]:
    """Holm's step-down verdicts: family-wise error at most `alpha` under any dependence.

    The smallest p-value is held to alpha/m, the next to alpha/(m-1), ...; testing stops at the
    first that passes, and every later signal keeps its own step's level in the report.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha}: expected a level between 0 and 1")
    order = sorted(p_values, key=lambda name: (p_values[name], name))
    m = len(order)
    verdicts: dict[str, Verdict] = {}
    still_rejecting = True
    for rank, name in enumerate(order):
        level = alpha / (m - rank)
        still_rejecting = still_rejecting and p_values[name] <= level
        verdicts[name] = Verdict(level, still_rejecting)
    return verdicts
