"""Embedding drift with the offline all-MiniLM-L6-v2 (loaded once per session)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.monitoring.synthetic import pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def encoded():
    embeddings = pytest.importorskip("kubetune.monitoring.embeddings")
    try:
        embeddings.model_dir()
    except embeddings.EmbeddingModelMissing as exc:
        pytest.skip(str(exc))
    texts = {
        "reference": [r["prompt"] for r in pairs(120, 11)],
        "same": [r["prompt"] for r in pairs(120, 12)],
        "shifted": [r["prompt"] for r in pairs(120, 13, shifted_share=1.0)],
    }
    return {k: embeddings.encode(v) for k, v in texts.items()}


def test_vectors_are_normalised_sentence_embeddings(encoded):
    ref = encoded["reference"]
    assert ref.shape == (120, 384) and ref.dtype == np.float32
    assert np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-4)
    # Same topic mix: closer on average than a different topic.
    assert float(ref.mean(0) @ encoded["same"].mean(0)) > float(ref.mean(0) @ encoded["shifted"].mean(0))


def test_embedding_drift_method(encoded):
    from kubetune.monitoring.evidently_adapter import embedding_drift

    same = embedding_drift("prompt.embedding", encoded["reference"], encoded["same"])
    shifted = embedding_drift("prompt.embedding", encoded["reference"], encoded["shifted"])
    # The verdict is the window's (Holm over all signals); a signal alone brings its p-value.
    assert shifted.score > 0.9 and shifted.p_value < 1e-6
    assert same.score < 0.7 and same.p_value > 0.01
    assert shifted.rows == (60, 60) and shifted.method == "domain classifier (sentence embeddings), held-out ROC AUC"


def test_compare_adds_embedding_signals_for_both_columns(encoded):
    from kubetune.monitoring.drift import DriftOptions, compare
    from kubetune.monitoring.records import record_from_row

    ref = [record_from_row(r) for r in pairs(40, 21)]
    cur = [record_from_row(r) for r in pairs(40, 22, shifted_share=1.0)]
    summary = compare(ref, cur, DriftOptions(min_samples=10, embedding_sample=40)).summary
    for col in ("prompt", "response"):
        signal = summary["signals"][f"{col}.embedding"]
        assert signal["method"].startswith("domain classifier (sentence embeddings)")
        assert signal["drifted"] is True and signal["pValue"] <= signal["threshold"] <= 0.05, signal
    assert summary["drift_detected"] is True
