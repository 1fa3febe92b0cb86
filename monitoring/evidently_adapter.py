"""Everything kubetune asks of Evidently (0.7.x), in one place, because its API moves.

- per-column drift with Evidently's own statistical tests, called directly: descriptor columns
  with its automatic test choice (K-S up to 1,000 rows, normed Wasserstein or Jensen-Shannon
  above), text columns with its domain-classifier text-content drift. A `Report` also renders a
  Plotly widget per metric (about 40% of its run time), which only the HTML page needs;
- the HTML page: one `Report` of `ValueDrift` metrics over the same frames (descriptors computed
  once, in `descriptors`), built only when a report is asked for; it runs the same tests on the
  same rows, so its verdicts are the JSON summary's;
- embedding drift by calling Evidently's drift method directly (the `EmbeddingsDrift` metric in a
  Report also computes a t-SNE plot, about a minute on 10k rows).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .descriptors import SENTIMENT_SAMPLE, sentiment, text_stats

TEXT_CONTENT_METHOD = "abs_text_content_drift"
TEXT_CONTENT_THRESHOLD = 0.55
"""ROC AUC of a TF-IDF domain classifier telling reference from current; 0.5 means alike."""
EMBEDDING_THRESHOLD = 0.55
"""ROC AUC of a linear classifier on the embeddings."""
DESCRIPTORS = ("length", "words", "non_letter", "sentiment")


@dataclass(frozen=True)
class Signal:
    name: str
    score: float | None
    method: str
    threshold: float | None
    drifted: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {"score": self.score, "method": self.method, "drifted": self.drifted, "threshold": self.threshold}
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


def _stattest(reference: pd.Series, current: pd.Series, kind: str, method: str | None, threshold: float | None):
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Text if kind == "text" else ColumnType.Numerical
    test = get_stattest(reference, current, column_type, method)
    return test, test(reference, current, column_type, threshold)


def value_drift(
    name: str,
    reference: pd.Series,
    current: pd.Series,
    *,
    kind: str = "num",
    method: str | None = None,
    threshold: float | None = None,
) -> Signal:
    """One column's drift as Evidently's `ValueDrift` computes it (same cleaning, test choice and
    thresholds), without the plot data and widget."""
    if kind == "num":
        reference = reference.replace([-np.inf, np.inf], np.nan).dropna()
        current = current.replace([-np.inf, np.inf], np.nan).dropna()
    if reference.empty or current.empty:
        return Signal(name, None, method or "auto", threshold, False, "no values to compare")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test, result = _stattest(reference, current, kind, method, threshold)
    score = float(result.drift_score)
    return Signal(
        name=name,
        score=None if np.isnan(score) else score,
        method=test.display_name,
        threshold=None if result.actual_threshold is None else float(result.actual_threshold),
        drifted=bool(result.drifted),
    )


class TextDrift:
    """Descriptor and text-content drift of the text columns of two frames, and its HTML page."""

    def __init__(self, reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], *, content: bool = True):
        self.columns = columns
        self.content = content
        self.notes: list[str] = []
        self.reference = describe(reference, columns)
        self.current = describe(current, columns)

    def signals(self) -> list[Signal]:
        out = []
        for col in self.columns:
            for d in DESCRIPTORS:
                name = f"{col}.{d}"
                out.append(value_drift(name, self.reference[name], self.current[name]))
        if not self.content:
            return out
        for col in self.columns:
            try:
                out.append(value_drift(f"{col}.content", self.reference[col], self.current[col], kind="text",
                                       method=TEXT_CONTENT_METHOD, threshold=TEXT_CONTENT_THRESHOLD))
            except ValueError as exc:  # the TF-IDF vocabulary can be empty (tiny or stop-word-only texts)
                note = f"{col} text-content drift skipped: {exc}"
                self.notes.append(note)
                out.append(Signal(f"{col}.content", None, TEXT_CONTENT_METHOD, TEXT_CONTENT_THRESHOLD, False, note))
        return out

    def report(self):
        """Evidently's run of the same tests on the same rows, with its widgets (for the HTML page)."""
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift

        numeric = [f"{col}.{d}" for col in self.columns for d in DESCRIPTORS]
        definition = DataDefinition(text_columns=list(self.columns), numerical_columns=numeric)
        metrics = [ValueDrift(column=name) for name in numeric]
        content = [ValueDrift(column=col, method=TEXT_CONTENT_METHOD, threshold=TEXT_CONTENT_THRESHOLD)
                   for col in self.columns if self.content and not any(n.startswith(f"{col} ") for n in self.notes)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = Dataset.from_pandas(self.reference, data_definition=definition)
            cur = Dataset.from_pandas(self.current, data_definition=definition)
            return Report(metrics + content, include_tests=True).run(cur, ref)

    def save_html(self, path: Path) -> None:
        """Evidently's page: distributions and verdicts per signal, typical words of drifted text."""
        self.report().save_html(str(path))


def embedding_drift(
    name: str, reference: np.ndarray, current: np.ndarray, *, threshold: float = EMBEDDING_THRESHOLD
) -> Signal:
    """Domain-classifier drift on embeddings (Evidently's `model` method), without t-SNE."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    method = model(threshold=threshold, bootstrap=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score, drifted, _ = method(pd.DataFrame(current), pd.DataFrame(reference))
    return Signal(name, float(score), "embedding domain classifier (ROC AUC)", threshold, bool(drifted))
