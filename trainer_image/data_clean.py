"""Cleaning, deduplication and PII redaction of examples (pure functions over Examples).

Normalisation keeps text readable (indentation, single blank lines) while removing what only
adds noise: non-NFC unicode, odd spaces, zero-width characters, trailing and repeated
whitespace. Deduplication keeps the first occurrence; near-duplicates are found with MinHash
over word shingles and LSH banding, then confirmed on the estimated Jaccard similarity.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter

from kubetune.common.pii import redact

from .data_formats import Example

_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")
_INNER_RUNS = re.compile(r"(?<=\S)[ \t]{2,}")
_BLANK_LINES = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")

NEAR_THRESHOLD = 0.8
"""Estimated Jaccard similarity of word shingles above which two rows are near-duplicates."""
SHINGLE_WORDS = 5
NUM_PERM = 128
BANDS = 16  # 16 bands of 8 rows: candidate pairs from about 0.7 similarity up
_PRIME = (1 << 31) - 1


def normalise_text(text: str) -> str:
    """NFC, plain spaces, no zero-width characters, no trailing or repeated whitespace."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _ZERO_WIDTH.sub("", _ODD_SPACES.sub(" ", text))
    lines = [_INNER_RUNS.sub(" ", line.rstrip()) for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _is_empty(ex: Example) -> bool:
    if ex.kind == "text":
        return not ex.text
    if ex.kind == "preference":
        return not ex.chosen or not ex.rejected or not any(m["content"] for m in ex.messages if m["role"] != "system")
    answers = [m for m in ex.messages if m["role"] == "assistant"]
    asks = [m for m in ex.messages if m["role"] in ("user", "tool")]
    return not answers[-1]["content"] or not any(m["content"] for m in asks)


def clean(examples: list[Example]) -> tuple[list[Example], int]:
    """Normalise every text field in place; drop empty rows. Returns (kept, dropped count)."""
    kept = []
    for ex in examples:
        ex.messages = [
            {"role": m["role"], "content": normalise_text(m["content"])}
            for m in ex.messages
            if not (m["role"] == "system" and not m["content"].strip())
        ]
        ex.text, ex.chosen, ex.rejected = (normalise_text(t) for t in (ex.text, ex.chosen, ex.rejected))
        if not _is_empty(ex):
            kept.append(ex)
    return kept, len(examples) - len(kept)


def dedup_key(ex: Example) -> str:
    """The text two rows must share to be exact duplicates: roles and contents, case-folded,
    whitespace collapsed."""
    parts = [f"{m['role']}:{m['content']}" for m in ex.messages] + [ex.text, ex.chosen, ex.rejected]
    return _ANY_SPACE.sub(" ", "\x1f".join(parts).casefold()).strip()


def deduplicate(examples: list[Example], mode: str, *, seed: int = 0) -> tuple[list[Example], int, int]:
    """Drop exact (and with mode "near", near) duplicates, keeping first occurrences.
    Returns (kept, exact count, near count)."""
    if mode == "none":
        return examples, 0, 0
    seen: set[str] = set()
    unique = []
    for ex in examples:
        key = dedup_key(ex)
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    exact = len(examples) - len(unique)
    if mode != "near":
        return unique, exact, 0
    keep = near_unique([dedup_key(ex) for ex in unique], seed=seed)
    kept = [ex for ex, k in zip(unique, keep) if k]
    return kept, exact, len(unique) - len(kept)


def _shingles(text: str) -> set[str]:
    words = _WORD.findall(text)
    n = min(SHINGLE_WORDS, len(words)) or 1
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def minhash_signatures(texts: list[str], *, seed: int = 0):
    """A [len(texts), NUM_PERM] uint64 array of MinHash values over word shingles."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, size=NUM_PERM, dtype=np.uint64)
    b = rng.integers(0, _PRIME, size=NUM_PERM, dtype=np.uint64)
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint64)
    for i, text in enumerate(texts):
        hashes = np.fromiter((zlib.crc32(s.encode()) for s in _shingles(text)), dtype=np.uint64)
        # a < 2^31 and hashes < 2^32: the product fits in 64 bits
        out[i] = ((hashes[:, None] * a[None, :] + b[None, :]) % _PRIME).min(axis=0)
    return out


def near_unique(texts: list[str], *, seed: int = 0, threshold: float = NEAR_THRESHOLD) -> list[bool]:
    """For each text, whether it is kept: False when an earlier kept text is a near-duplicate."""
    if not texts:
        return []
    sig = minhash_signatures(texts, seed=seed)
    rows = NUM_PERM // BANDS
    buckets: dict[tuple[int, bytes], list[int]] = {}
    keep = [True] * len(texts)
    for i in range(len(texts)):
        keys = [(band, sig[i, band * rows : (band + 1) * rows].tobytes()) for band in range(BANDS)]
        candidates = {j for key in keys for j in buckets.get(key, ())}
        if any((sig[i] == sig[j]).mean() >= threshold for j in sorted(candidates)):
            keep[i] = False
            continue
        for key in keys:
            buckets.setdefault(key, []).append(i)
    return keep


def redact_pii(examples: list[Example]) -> tuple[list[Example], dict[str, int], int]:
    """Replace PII in every text field with typed placeholders.
    Returns (examples, counts by kind, rows with at least one redaction)."""
    counts: Counter[str] = Counter()
    rows = 0
    for ex in examples:
        before = sum(counts.values())

        def scrub(text: str) -> str:
            if not text:
                return text
            result = redact(text)
            counts.update(result.counts)
            return result.text

        ex.messages = [{"role": m["role"], "content": scrub(m["content"])} for m in ex.messages]
        ex.text, ex.chosen, ex.rejected = scrub(ex.text), scrub(ex.chosen), scrub(ex.rejected)
        rows += sum(counts.values()) > before
    return examples, dict(sorted(counts.items())), rows
