"""Text descriptors for drift, computed once per column and shared by the JSON summary and the HTML report.

Length, word count and non-letter share come from one pass over the texts' code points with
numpy (a regex or a Python function per text costs 10-50x more on a 10k-row window). They match
the regex definitions exactly: a word is a run of `\\S+`, a letter is `[^\\W\\d_]` and a space is
`\\s`, all in Python's Unicode sense. Sentiment is VADER's compound score, a pure-Python lexicon
walk of ~0.1 ms a text, so it runs on an evenly spaced sample, once per distinct text.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SENTIMENT_SAMPLE = 1500
"""Texts per side and column scored with VADER (evenly spaced, so a time-ordered log is covered
end to end). Kept above 1,000 so Evidently's automatic test stays the normed Wasserstein distance
(threshold 0.1 reference standard deviations): two same-distribution samples of 1,500 sit about
0.03-0.05 apart on it (seeded trials in tests/monitoring), well under the threshold, while a
real shift of 0.1 sd is still seen."""
SENTIMENT_MAX_CHARS = 2000
"""VADER reads the start of long texts only: its cost grows with length, its score saturates."""
_CHUNK_CHARS = 4_000_000
"""Code points per numpy pass (16 MB of uint32), so very long texts do not blow up memory."""

_ASCII = [chr(i) for i in range(128)]
_ASCII_LETTER = np.array([c.isalnum() and not c.isdecimal() for c in _ASCII])
_ASCII_SPACE = np.array([c.isspace() for c in _ASCII])


def _classify(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_letter, is_space) per code point; non-ASCII ones are looked up once per distinct char."""
    ascii_ = codes < 128
    clipped = np.where(ascii_, codes, 0)
    letter, space = _ASCII_LETTER[clipped], _ASCII_SPACE[clipped]
    if not ascii_.all():
        wide = ~ascii_
        distinct, inverse = np.unique(codes[wide], return_inverse=True)
        chars = [chr(c) if not 0xD800 <= c < 0xE000 else "\ufffd" for c in distinct.tolist()]
        letter[wide] = np.array([c.isalnum() and not c.isdecimal() for c in chars])[inverse]
        space[wide] = np.array([c.isspace() for c in chars])[inverse]
    return letter, space


def _stats_chunk(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    letter, space = _classify(codes)
    prev_space = np.ones(len(codes), dtype=bool)
    prev_space[1:] = space[:-1]
    prev_space[starts[lengths > 0]] = True  # a text's first char starts a word whatever came before
    word_start = ~space & prev_space

    def per_text(flags: np.ndarray) -> np.ndarray:
        total = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
        return total[ends] - total[starts]

    other = lengths - per_text(letter) - per_text(space)
    with np.errstate(invalid="ignore", divide="ignore"):
        non_letter = np.where(lengths > 0, other / np.maximum(lengths, 1), 0.0)
    return lengths, per_text(word_start), non_letter


def text_stats(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """`length` (characters), `words` (runs of non-space) and `non_letter` (share of characters that
    are neither letters nor whitespace: digits, punctuation, symbols; 0 for an empty text)."""
    texts = [t if isinstance(t, str) else "" for t in texts]
    parts, chunk, size = [], [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= _CHUNK_CHARS:
            parts.append(_stats_chunk(chunk))
            chunk, size = [], 0
    if chunk or not parts:
        parts.append(_stats_chunk(chunk))
    length, words, non_letter = (np.concatenate(p) for p in zip(*parts))
    return {"length": length.astype(float), "words": words.astype(float), "non_letter": non_letter}


_vader = None


def _polarity():
    global _vader
    if _vader is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _vader = SentimentIntensityAnalyzer()
    return _vader.polarity_scores


def sentiment_rows(n: int, sample: int = SENTIMENT_SAMPLE) -> np.ndarray:
    """Indices of the evenly spaced rows scored for sentiment (at most `sample`; all when 0)."""
    if sample <= 0 or n <= sample:
        return np.arange(n)
    return np.linspace(0, n - 1, sample).round().astype(np.int64)  # distinct, since n > sample


def sentiment(texts: Sequence[str], sample: int = SENTIMENT_SAMPLE) -> np.ndarray:
    """VADER compound score in [-1, 1] on the sampled rows, NaN elsewhere (drift tests drop NaN)."""
    polarity = _polarity()
    out = np.full(len(texts), np.nan)
    cache: dict[str, float] = {}
    for i in sentiment_rows(len(texts), sample).tolist():
        text = texts[i]
        text = text[:SENTIMENT_MAX_CHARS] if isinstance(text, str) else ""
        score = cache.get(text)
        if score is None:
            score = cache[text] = polarity(text)["compound"] if text else 0.0
        out[i] = score
    return out
