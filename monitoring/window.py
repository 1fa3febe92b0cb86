"""The traffic window as training data for the next fine-tune.

Flagged responses are excluded (the gateway's verdict, or the offline scorer where the log has
none), so are answers a client rated -1 through `/v1/feedback`, PII is redacted again (logs may have been written with redaction off), and pairs are
deduplicated on normalised text. Written as alpaca JSON lines, atomically.
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


@dataclass(frozen=True)
class WindowData:
    path: Path
    rows: int
    excluded_flagged: int
    excluded_negative: int
    duplicates: int
    empty: int
    digest: str


def window_id(start_iso: str, end_iso: str) -> str:
    """A short stable id of a time window, used in file and FineTuneJob names."""
    return hashlib.sha256(f"{start_iso}/{end_iso}".encode()).hexdigest()[:10]


def _key(prompt: str, response: str) -> str:
    return _SPACE.sub(" ", f"{prompt}\x00{response}".strip().lower())


def training_rows(records: Sequence[Record], scorer: SafetyScorer | None = None) -> tuple[list[dict], dict]:
    verdicts, _ = flagged(records, scorer)
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


def write_window(records: Sequence[Record], path: Path, scorer: SafetyScorer | None = None) -> WindowData:
    rows, counts = training_rows(records, scorer)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)
    return WindowData(Path(path), len(rows), digest="sha256:" + hashlib.sha256(text.encode()).hexdigest(), **counts)


def feedback_figures(records: Sequence[Record]) -> dict:
    """Ratings in the window: how many answers were rated, and how."""
    ratings = [r.rating for r in records if r.rating is not None]
    return {
        "rated": len(ratings),
        "positive": sum(1 for r in ratings if r > 0),
        "negative": sum(1 for r in ratings if r < 0),
        "meanRating": round(sum(ratings) / len(ratings), 4) if ratings else None,
    }
