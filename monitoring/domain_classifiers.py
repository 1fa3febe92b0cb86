"""The two domain classifiers behind the content signals: they learn to tell current rows from
reference rows, and `significance.classifier_test` asks whether they do better than chance.

Both are balanced logistic regressions (a window is usually far smaller than the reference, and
an unweighted fit on 20 against 1,000 rows predicts "reference" for everything), fitted with a
fixed solver so the same rows give the same scores.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def _logistic(seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(class_weight="balanced", C=1.0, max_iter=1000, solver="liblinear", random_state=seed)


def fit_text(rows: Sequence[str], labels: np.ndarray, seed: int) -> Callable[[Sequence[str]], np.ndarray]:
    """TF-IDF of words and word pairs; raises ValueError when the rows have no words at all."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    model = _logistic(seed).fit(vectorizer.fit_transform(list(rows)), labels)
    return lambda texts: model.decision_function(vectorizer.transform(list(texts)))


def fit_vectors(rows: Sequence[np.ndarray], labels: np.ndarray, seed: int) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """Sentence embeddings as they are (all-MiniLM-L6-v2 vectors are already normalised)."""
    model = _logistic(seed).fit(np.vstack(rows), labels)
    return lambda vectors: model.decision_function(np.vstack(vectors))
