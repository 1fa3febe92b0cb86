"""Reading prompt/response pairs from payload logs and training dataset files.

The monitor compares two sets of pairs; either may be the gateway's payload log (docs/contracts.md)
or a training dataset in the formats the trainer accepts (alpaca, chat, text). A malformed line is
counted and reported with file:line, never fatal and never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

MAX_REPORTED_PROBLEMS = 20


@dataclass(frozen=True)
class Record:
    prompt: str
    response: str
    flagged: bool | None = None
    """The gateway's safety verdict when the log carries one; None for training data."""
    time: datetime | None = None
    id: str | None = None
    """Request id in a payload log; a later line with the same id (feedback) replaces the earlier."""
    rating: int | None = None
    """A client's `/v1/feedback` rating of the answer (-1, 0 or 1); None when unrated."""


@dataclass
class LoadResult:
    records: list[Record] = field(default_factory=list)
    malformed: int = 0
    problems: list[str] = field(default_factory=list)
    """`file:line: reason` for the first MAX_REPORTED_PROBLEMS malformed lines."""
    outside_window: int = 0

    def note(self, where: str, reason: str) -> None:
        self.malformed += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(f"{where}: {reason}")


def flatten_messages(messages: Iterable[Any]) -> tuple[str, str]:
    """Chat messages as (prompt, response): `role: content` lines, the last assistant turn apart.

    The same flattening the gateway uses for its payload log, so training chats and served chats
    are compared like for like.
    """
    turns = []
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError("a message is not an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError("a message lacks a string role/content (or from/value)")
        role = {"human": "user", "gpt": "assistant"}.get(role, role)
        turns.append((role, content))
    if not turns:
        raise ValueError("messages is empty")
    if turns[-1][0] == "assistant":
        response = turns[-1][1]
        turns = turns[:-1]
    else:
        response = ""
    return "\n".join(f"{role}: {content}" for role, content in turns), response


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def record_from_row(row: Any) -> Record:
    """One row of any supported format as a Record; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "prompt" in row and ("response" in row or "completion" in row):
        prompt, response = row["prompt"], row.get("response", row.get("completion"))
    elif "instruction" in row and "output" in row:  # alpaca
        prompt, response = row["instruction"], row["output"]
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip() and isinstance(prompt, str):
            prompt = f"{prompt}\n{extra}"
    elif "messages" in row or "conversations" in row:  # chat / ShareGPT
        messages = row.get("messages", row.get("conversations"))
        if not isinstance(messages, list):
            raise ValueError("messages is not a list")
        prompt, response = flatten_messages(messages)
    elif "text" in row:  # raw text: no prompt/response split, the text stands for the prompt
        prompt, response = row["text"], ""
    else:
        raise ValueError(
            "no known fields: expected prompt/response, instruction/output (alpaca), messages (chat) or text"
        )
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError("prompt and response must be strings")
    safety = row.get("safety")
    flagged = bool(safety.get("flagged")) if isinstance(safety, dict) and "flagged" in safety else None
    rid = row.get("id")
    feedback = row.get("feedback")
    rating = feedback.get("rating") if isinstance(feedback, dict) else None
    rating = rating if isinstance(rating, int) and not isinstance(rating, bool) and rating in (-1, 0, 1) else None
    return Record(prompt, response, flagged, _parse_time(row.get("time")), rid if isinstance(rid, str) else None,
                  rating)


def payload_log_files(directory: Path) -> list[Path]:
    """The gateway's payload logs under a folder, oldest first (`payloads.jsonl.2`, `.1`, then current)."""

    def age(p: Path) -> tuple[str, int]:
        suffix = p.name.rpartition(".")[2]
        return (str(p.parent), -int(suffix) if suffix.isdigit() else 0)

    return sorted((p for p in directory.rglob("payloads.jsonl*") if p.is_file()), key=age)


def load_many(paths: Iterable[Path], *, since: datetime | None = None) -> LoadResult:
    """Records of several files (or folders of payload logs) as one window."""
    total = LoadResult()
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        files.extend(payload_log_files(path) if path.is_dir() else [path])
    for file in files:
        part = load(file, since=since, into=total)
        assert part is total
    return total


def load(path: str | Path, *, since: datetime | None = None, into: LoadResult | None = None) -> LoadResult:
    """Records of a JSON lines file (or a JSON array file), keeping those at or after `since`.

    Rows without a time are kept: training files have none, and a log row without one is more
    likely recent than not.
    """
    path = Path(path)
    if path.is_dir():
        return load_many([path], since=since)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    result = into if into is not None else LoadResult()
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
        fh.seek(0)
        if head == "[":
            try:
                rows = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
            numbered: Iterable[tuple[str, Any]] = ((f"{path}[{i}]", row) for i, row in enumerate(rows))
            _collect(result, numbered, since)
            return result
        _collect(result, _json_lines(fh, path, result), since)
    return result


def _json_lines(fh, path: Path, result: LoadResult):
    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            result.note(f"{path}:{lineno}", f"not valid JSON ({exc.msg})")


def _collect(result: LoadResult, rows: Iterable[tuple[str, Any]], since: datetime | None) -> None:
    by_id: dict[str, int] = {i: n for n, r in enumerate(result.records) if (i := r.id) is not None}
    for where, row in rows:
        try:
            record = record_from_row(row)
        except ValueError as exc:
            result.note(where, str(exc))
            continue
        if since is not None and record.time is not None and record.time < since:
            result.outside_window += 1
            continue
        if record.id is not None and record.id in by_id:
            result.records[by_id[record.id]] = record
            continue
        if record.id is not None:
            by_id[record.id] = len(result.records)
        result.records.append(record)
