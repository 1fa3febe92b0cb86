"""Everything kubetune asks of Evidently (0.7.x), in one place, because its API moves.

- text descriptors that work offline, as Evidently custom descriptors: length, word count and
  non-letter share (vectorised with pandas string methods: Evidently's built-ins apply a Python
  function per row) and sentiment (VADER from the `vaderSentiment` wheel: Evidently's built-in
  Sentiment asks NLTK to download its lexicon);
- per-column drift through one `Report` of `ValueDrift` metrics: descriptor columns with
  Evidently's automatic test choice, text columns with the domain-classifier text-content drift;
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

TEXT_CONTENT_METHOD = "abs_text_content_drift"
TEXT_CONTENT_THRESHOLD = 0.55
"""ROC AUC of a TF-IDF domain classifier telling reference from current; 0.5 means alike."""
EMBEDDING_THRESHOLD = 0.55
"""ROC AUC of a linear classifier on the embeddings."""
DESCRIPTORS = ("length", "words", "non_letter", "sentiment")
SENTIMENT_SAMPLE = 2500
"""Rows per side scored with VADER (evenly spaced, so a time-ordered log is covered end to end);
the others are left empty and Evidently's drift test skips them. VADER costs ~0.1-0.4 ms a text,
the most expensive descriptor by far; 2,500 values per side are plenty for a distribution test."""


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


_vader = None


def _sentiment(column):
    """VADER compound score per text, in [-1, 1]."""
    global _vader
    from evidently.core.datasets import DatasetColumn
    from evidently.legacy.core import ColumnType

    if _vader is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _vader = SentimentIntensityAnalyzer()
    polarity = _vader.polarity_scores
    data = column.data
    values = pd.Series(np.nan, index=data.index, dtype=float)
    step = max(1, -(-len(data) // SENTIMENT_SAMPLE))  # ceil: at most SENTIMENT_SAMPLE rows
    picked = data.iloc[::step]
    values.iloc[::step] = picked.map(lambda v: polarity(v[:2000])["compound"] if isinstance(v, str) and v else 0.0)
    return DatasetColumn(ColumnType.Numerical, values)


def _numeric(values: pd.Series):
    from evidently.core.datasets import DatasetColumn
    from evidently.legacy.core import ColumnType

    return DatasetColumn(ColumnType.Numerical, values.astype(float))


def _length(column):
    """Characters per text (vectorised; Evidently's TextLength applies a Python function per row)."""
    return _numeric(column.data.fillna("").astype(str).str.len())


def _words(column):
    """Whitespace-separated words per text."""
    return _numeric(column.data.fillna("").astype(str).str.count(r"\S+"))


def _non_letter(column):
    """Share of characters that are neither letters nor whitespace (digits, punctuation, symbols)."""
    text = column.data.fillna("").astype(str)
    length = text.str.len()
    other = length - text.str.count(r"[^\W\d_]") - text.str.count(r"\s")
    return _numeric((other / length.where(length > 0)).fillna(0.0))


def _descriptors(columns: list[str]) -> list:
    from evidently.descriptors import CustomColumnDescriptor

    out = []
    for col in columns:
        out += [
            CustomColumnDescriptor(col, _length, alias=f"{col}.length"),
            CustomColumnDescriptor(col, _words, alias=f"{col}.words"),
            CustomColumnDescriptor(col, _non_letter, alias=f"{col}.non_letter"),
            CustomColumnDescriptor(col, _sentiment, alias=f"{col}.sentiment"),
        ]
    return out


class TextDriftRun:
    """One Evidently report over the text columns of two frames; keeps the snapshot for HTML."""

    def __init__(self, reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], *, content: bool = True):
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift

        self.columns = columns
        self.notes: list[str] = []
        definition = DataDefinition(text_columns=list(columns))
        descriptors = _descriptors(columns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = Dataset.from_pandas(reference[columns], data_definition=definition, descriptors=descriptors)
            cur = Dataset.from_pandas(current[columns], data_definition=definition, descriptors=descriptors)
        metrics = [ValueDrift(column=f"{col}.{d}") for col in columns for d in DESCRIPTORS]
        content_metrics = [
            ValueDrift(column=col, method=TEXT_CONTENT_METHOD, threshold=TEXT_CONTENT_THRESHOLD) for col in columns
        ]
        self.snapshot = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if content:
                try:
                    self.snapshot = Report(metrics + content_metrics, include_tests=True).run(cur, ref)
                except ValueError as exc:
                    # The TF-IDF vocabulary can be empty (tiny or stop-word-only texts).
                    self.notes.append(f"text-content drift skipped: {exc}")
            if self.snapshot is None:
                self.snapshot = Report(metrics, include_tests=True).run(cur, ref)

    def signals(self) -> list[Signal]:
        data = self.snapshot.dict()
        verdicts = {}
        for test in data.get("tests", []):
            params = test.get("metric_config", {}).get("params", {})
            verdicts[params.get("column")] = test.get("status") == "FAIL"
        out = []
        for metric in data["metrics"]:
            config = metric.get("config", {})
            if not config.get("type", "").endswith("ValueDrift"):
                continue
            column = config["column"]
            name = column if "." in column else f"{column}.content"
            value = metric.get("value")
            score = None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)
            out.append(
                Signal(
                    name=name,
                    score=score,
                    method=_method_name(metric.get("metric_name", ""), config.get("method")),
                    threshold=config.get("threshold"),
                    drifted=bool(verdicts.get(column, False)),
                )
            )
        for col in self.columns:
            if self.notes and not any(s.name == f"{col}.content" for s in out):
                out.append(Signal(f"{col}.content", None, TEXT_CONTENT_METHOD, TEXT_CONTENT_THRESHOLD, False, self.notes[0]))
        return out

    def save_html(self, path: Path) -> None:
        self.snapshot.save_html(str(path))


def _method_name(metric_name: str, fallback: str | None) -> str:
    # metric_name looks like "ValueDrift(column=x,method=K-S p_value,threshold=0.05)"
    marker = "method="
    if marker in metric_name:
        return metric_name.split(marker, 1)[1].split(",threshold", 1)[0].rstrip(")")
    return fallback or "auto"


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
