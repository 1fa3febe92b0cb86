"""Text descriptors: the vectorised pass agrees with the regex definitions; sentiment is sampled evenly."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from kubetune.monitoring import descriptors
from kubetune.monitoring.descriptors import sentiment, sentiment_rows, text_stats

# ASCII, Latin-1 and CJK letters, digits, underscore, non-ASCII digits and spaces (NBSP, em space),
# a vulgar fraction (alphanumeric but not a digit), an emoji and a lone surrogate (JSON can carry one).
ALPHABET = list("ab cd\t\n12_!?.éß漢字 ") + ["\u00a0", "\u2003", "\u0663", "½", "\U0001f600", "\ud800"]


def regex_stats(texts: list[str]) -> dict[str, np.ndarray]:
    """The definitions, as regexes over a pandas Series (what Evidently's descriptors do per row)."""
    s = pd.Series(texts)
    length = s.str.len()
    other = length - s.str.count(r"[^\W\d_]") - s.str.count(r"\s")
    return {"length": length.to_numpy(float), "words": s.str.count(r"\S+").to_numpy(float),
            "non_letter": (other / length.where(length > 0)).fillna(0.0).to_numpy()}


@pytest.fixture
def texts():
    rng = random.Random(7)
    out = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    return out + ["", " ", "x", "  two  words  ", "\u2003lead", "trail\u00a0"]


def test_text_stats_match_the_regex_definitions(texts):
    got, want = text_stats(texts), regex_stats(texts)
    assert np.array_equal(got["length"], want["length"])
    assert np.array_equal(got["words"], want["words"])
    assert np.allclose(got["non_letter"], want["non_letter"])


def test_text_stats_are_the_same_across_chunk_boundaries(texts, monkeypatch):
    whole = text_stats(texts)
    monkeypatch.setattr(descriptors, "_CHUNK_CHARS", 37)  # many chunks, boundaries inside runs of words
    chunked = text_stats(texts)
    for name in whole:
        assert np.array_equal(whole[name], chunked[name]), name


def test_text_stats_of_nothing_and_of_non_strings():
    assert all(len(v) == 0 for v in text_stats([]).values())
    stats = text_stats([None, "a1"])
    assert stats["length"].tolist() == [0.0, 2.0] and stats["non_letter"].tolist() == [0.0, 0.5]


@pytest.mark.parametrize("n", [0, 1, 999, 1500, 1501, 3001, 10_000])
def test_sentiment_rows_are_evenly_spaced_and_capped(n):
    rows = sentiment_rows(n, 1500)
    assert len(rows) == min(n, 1500) and len(np.unique(rows)) == len(rows)
    if n:
        assert rows[0] == 0 and rows[-1] == n - 1  # a time-ordered log is covered end to end
    if n > 1500:
        gaps = np.diff(rows)
        assert gaps.max() - gaps.min() <= 1


def test_sentiment_scores_the_sample_with_vader_and_leaves_the_rest_empty():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["I love this, it is wonderful!", "This is terrible and awful.", "", "The box is brown."] * 5
    scores = sentiment(texts, sample=10)
    picked = sentiment_rows(len(texts), 10)
    assert np.isnan(np.delete(scores, picked)).all()
    vader = SentimentIntensityAnalyzer()
    for i in picked:
        want = vader.polarity_scores(texts[i])["compound"] if texts[i] else 0.0
        assert scores[i] == pytest.approx(want)
    assert scores[0] > 0.5 and scores[picked[picked % 4 == 1][0]] < -0.5
