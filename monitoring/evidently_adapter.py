"""Drift signals of text columns, and Evidently's HTML page of them (Evidently 0.7.x, whose API moves).

- the signals: per descriptor column a two-sample K-S test, per text column a TF-IDF domain
  classifier, each with a p-value (`significance`), so a window of 20 rows and one of 5,000 are
  held to the same false-alarm rate. Evidently's defaults are fixed cut-offs instead (a
  Wasserstein distance of 0.1 above 1,000 rows, an ROC AUC of 0.55), whose false-alarm rate
  depends on the window size;
- the HTML page: one Evidently `Report` of `ValueDrift` metrics over the same frames (descriptors
  computed once, in `descriptors`), built only when a report is asked for. Descriptors use its
  K-S test at each signal's own level, so its verdicts are ours; text columns use its percentile
  text-content drift (a domain classifier against the random-classifier null, the same null as
  ours, at the same level), for its typical words and examples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .descriptors import SENTIMENT_SAMPLE, sentiment, text_stats
from .significance import TestResult, classifier_test, ks_test

TEXT_CONTENT_METHOD = "domain classifier (TF-IDF), held-out ROC AUC"
EMBEDDING_METHOD = "domain classifier (sentence embeddings), held-out ROC AUC"
DESCRIPTOR_METHOD = "K-S"
DESCRIPTORS = ("length", "words", "non_letter", "sentiment")


@dataclass(frozen=True)
class Signal:
    name: str
    score: float | None
    """The effect: K-S distance, or a classifier's held-out ROC AUC (0.5 = no difference)."""
    method: str
    p_value: float | None = None
    threshold: float | None = None
    """The level the p-value is held to (set by the window's Holm correction)."""
    drifted: bool = False
    rows: tuple[int, int] | None = None
    """Rows behind the p-value (reference, current): held-out rows for a classifier."""
    note: str = ""

    @classmethod
    def of(cls, name: str, result: TestResult) -> "Signal":
        return cls(name, result.statistic, result.method, result.p_value, rows=result.rows)

    def judged(self, level: float, drifted: bool) -> "Signal":
        return replace(self, threshold=level, drifted=drifted)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"score": self.score, "pValue": self.p_value, "threshold": self.threshold,
                               "method": self.method, "drifted": self.drifted}
        if self.rows is not None:
            out["rows"] = {"reference": self.rows[0], "current": self.rows[1]}
        if self.note:
            out["note"] = self.note
        return out


def describe(frame: pd.DataFrame, columns: list[str], *, sentiment_sample: int = SENTIMENT_SAMPLE) -> pd.DataFrame:
    """The text columns plus `<col>.<descriptor>` numeric columns, each computed once."""
    out = {col: frame[col] for col in columns}
    for col in columns:
        texts = frame[col].tolist()
        for name, values in text_stats(texts).items():
            out[f"{col}.{name}"] = values
        out[f"{col}.sentiment"] = sentiment(texts, sentiment_sample)
    return pd.DataFrame(out, index=frame.index)


class TextDrift:
    """Descriptor and text-content drift of the text columns of two frames, and its HTML page."""

    def __init__(self, reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], *, content: bool = True,
                 seed: int = 0):
        self.columns = columns
        self.content = content
        self.seed = seed
        self.notes: list[str] = []
        self.reference = describe(reference, columns)
        self.current = describe(current, columns)

    def signals(self) -> list[Signal]:
        """Every signal with its p-value; `drift.compare` sets the levels and verdicts."""
        from .domain_classifiers import fit_text

        out = []
        for col in self.columns:
            for d in DESCRIPTORS:
                name = f"{col}.{d}"
                try:
                    out.append(Signal.of(name, ks_test(self.reference[name], self.current[name])))
                except ValueError as exc:
                    out.append(Signal(name, None, DESCRIPTOR_METHOD, note=str(exc)))
        if not self.content:
            return out
        for i, col in enumerate(self.columns):
            name = f"{col}.content"
            try:
                result = classifier_test(self.reference[col].tolist(), self.current[col].tolist(), fit_text,
                                         seed=self.seed + i, method=TEXT_CONTENT_METHOD)
                out.append(Signal.of(name, result))
            except ValueError as exc:  # an empty vocabulary (tiny or punctuation-only texts), too few rows
                note = f"{col} text-content drift skipped: {exc}"
                self.notes.append(note)
                out.append(Signal(name, None, TEXT_CONTENT_METHOD, note=note))
        return out

    def report(self, levels: Mapping[str, float]):
        """Evidently's page of the same rows, each signal tested at its level (module docstring)."""
        import warnings

        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift

        numeric = [f"{col}.{d}" for col in self.columns for d in DESCRIPTORS]
        definition = DataDefinition(text_columns=list(self.columns), numerical_columns=numeric)
        metrics = [ValueDrift(column=name, method="ks", threshold=levels[name]) for name in numeric if name in levels]
        content = [ValueDrift(column=col, method="perc_text_content_drift", threshold=1 - levels[f"{col}.content"])
                   for col in self.columns if f"{col}.content" in levels]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = Dataset.from_pandas(self.reference, data_definition=definition)
            cur = Dataset.from_pandas(self.current, data_definition=definition)
            return Report(metrics + content, include_tests=True).run(cur, ref)

    def save_html(self, path: Path, levels: Mapping[str, float]) -> None:
        """Evidently's page: distributions and verdicts per signal, typical words of drifted text."""
        self.report(levels).save_html(str(path))


def embedding_drift(name: str, reference: np.ndarray, current: np.ndarray, *, seed: int = 0) -> Signal:
    """Domain-classifier drift on sentence embeddings, with its p-value."""
    from .domain_classifiers import fit_vectors

    try:
        return Signal.of(name, classifier_test(list(reference), list(current), fit_vectors, seed=seed,
                                               method=EMBEDDING_METHOD))
    except ValueError as exc:
        return Signal(name, None, EMBEDDING_METHOD, note=str(exc))
