"""The traffic window as training data for the next fine-tune.

Two files, both written atomically:
- `window.jsonl` (alpaca, for SFT): flagged responses are excluded (the gateway's verdict, or the
  offline scorer where the log has none), so are answers a client rated -1 through
  `/v1/feedback`; PII is redacted again (logs may have been written with redaction off), and
  pairs are deduplicated on normalised text.
- `preferences.jsonl` (prompt/chosen/rejected, for DPO and ORPO): where one prompt got an answer
  rated +1 and another rated -1 or flagged, the two become a pair. Nothing is invented: a prompt
  without both kinds of answer gives no pair.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kubetune.common.pii import redact
from kubetune.common.safety import SafetyScorer

from .files import atomic_write_text
from .records import Record
from .safety_figures import flagged

_SPACE = re.compile(r"\s+")
PREFERENCES_FILE = "preferences.jsonl"


@dataclass(frozen=True)
class WindowData:
    path: Path
    rows: int
    excluded_flagged: int
    excluded_negative: int
    duplicates: int
    empty: int
    digest: str
    preference_path: Path | None = None
    preference_pairs: int = 0


def window_id(start_iso: str, end_iso: str) -> str:
    """A short stable id of a time window, used in file and FineTuneJob names."""
    return hashlib.sha256(f"{start_iso}/{end_iso}".encode()).hexdigest()[:10]


def _key(prompt: str, response: str) -> str:
    return _SPACE.sub(" ", f"{prompt}\x00{response}".strip().lower())


def training_rows(records: Sequence[Record], verdicts: Sequence[bool]) -> tuple[list[dict], dict]:
    """SFT rows of the window and what was left out; `verdicts` are the records' safety flags."""
    rows, seen = [], set()
    counts = {"excluded_flagged": 0, "excluded_negative": 0, "duplicates": 0, "empty": 0}
    for record, bad in zip(records, verdicts):
        if bad:
            counts["excluded_flagged"] += 1
            continue
        if record.rating is not None and record.rating < 0:
            counts["excluded_negative"] += 1
            continue
        prompt, response = redact(record.prompt).text.strip(), redact(record.response).text.strip()
        if not prompt or not response:
            counts["empty"] += 1
            continue
        key = _key(prompt, response)
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        rows.append({"instruction": prompt, "input": "", "output": response})
    return rows, counts


MAX_PAIRS_PER_PROMPT = 8
"""A prompt asked a thousand times must not outweigh the rest of the window."""


def preference_rows(records: Sequence[Record], verdicts: Sequence[bool]) -> list[dict]:
    """Preference pairs from ratings: per prompt, each rejected answer (-1 or flagged) beside a
    chosen one (+1, not flagged), chosen answers taken in turn; in the order prompts first appear."""
    by_prompt: dict[str, tuple[str, list[str], list[str]]] = {}
    for record, bad in zip(records, verdicts):
        good = record.rating is not None and record.rating > 0 and not bad
        worse = bad or (record.rating is not None and record.rating < 0)
        if not (good or worse):
            continue  # before redacting: most answers are unrated
        prompt, response = redact(record.prompt).text.strip(), redact(record.response).text.strip()
        if not prompt or not response:
            continue
        _, chosen, rejected = by_prompt.setdefault(_SPACE.sub(" ", prompt.lower()), (prompt, [], []))
        side = chosen if good else rejected
        if all(_key(prompt, other) != _key(prompt, response) for other in side):
            side.append(response)
    rows = []
    for prompt, chosen, rejected in by_prompt.values():
        if not chosen or not rejected:
            continue
        for i, bad_answer in enumerate(rejected[:MAX_PAIRS_PER_PROMPT]):
            rows.append({"prompt": prompt, "chosen": chosen[i % len(chosen)], "rejected": bad_answer})
    return rows


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_window(records: Sequence[Record], path: Path, scorer: SafetyScorer | None = None) -> WindowData:
    """`path` (alpaca rows) and `preferences.jsonl` beside it (rated pairs)."""
    verdicts, _ = flagged(records, scorer)  # once: a model scorer is the slow part
    rows, counts = training_rows(records, verdicts)
    text = _jsonl(rows)
    pairs = preference_rows(records, verdicts)
    preference_path = Path(path).with_name(PREFERENCES_FILE)
    atomic_write_text(preference_path, _jsonl(pairs))
    atomic_write_text(path, text)
    return WindowData(Path(path), len(rows), digest="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
                      preference_path=preference_path, preference_pairs=len(pairs), **counts)


def feedback_figures(records: Sequence[Record]) -> dict:
    """Ratings in the window: how many answers were rated, and how."""
    ratings = [r.rating for r in records if r.rating is not None]
    return {
        "rated": len(ratings),
        "positive": sum(1 for r in ratings if r > 0),
        "negative": sum(1 for r in ratings if r < 0),
        "meanRating": round(sum(ratings) / len(ratings), 4) if ratings else None,
    }
