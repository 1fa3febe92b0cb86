"""Scoring the quickstart's JSON answers: is it JSON, is it the fixed shape, are the facts right.

Pure. A response counts as JSON when it holds one JSON object (prose or a Markdown fence around
it is tolerated, as a user would tolerate it); the record is an exact match only when it has
exactly the expected keys and every value equals the reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from kubetune.quickstart_data import FIELDS


def extract_json_object(text: str) -> dict | None:
    """The first JSON object in `text`, or None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _same(expected, got) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(float(expected), float(got), abs_tol=0.005)
    if isinstance(expected, str) and isinstance(got, str):
        return expected.strip() == got.strip()
    return False


@dataclass(frozen=True)
class AnswerScore:
    valid_json: bool
    shape_ok: bool
    """Exactly the expected keys."""
    correct_fields: tuple[str, ...]
    exact: bool

    @property
    def field_accuracy(self) -> float:
        return len(self.correct_fields) / len(FIELDS)


def score_answer(response: str, reference: str | dict) -> AnswerScore:
    expected = json.loads(reference) if isinstance(reference, str) else reference
    got = extract_json_object(response or "")
    if got is None:
        return AnswerScore(False, False, (), False)
    correct = tuple(f for f in FIELDS if f in got and f in expected and _same(expected[f], got[f]))
    shape_ok = set(got) == set(FIELDS)
    return AnswerScore(True, shape_ok, correct, shape_ok and len(correct) == len(FIELDS))


@dataclass(frozen=True)
class TaskScore:
    """Rates over a set of held-out prompts (0..1)."""

    n: int
    json_valid: float
    shape_ok: float
    field_accuracy: float
    exact_match: float
    per_field: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "jsonValid": round(self.json_valid, 4),
            "shapeOk": round(self.shape_ok, 4),
            "fieldAccuracy": round(self.field_accuracy, 4),
            "exactMatch": round(self.exact_match, 4),
            "perField": {k: round(v, 4) for k, v in self.per_field.items()},
        }


def score_task(responses: list[str], references: list[str | dict]) -> TaskScore:
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses for {len(references)} references")
    if not responses:
        raise ValueError("nothing to score: no responses")
    scores = [score_answer(r, ref) for r, ref in zip(responses, references)]
    n = len(scores)
    return TaskScore(
        n=n,
        json_valid=sum(s.valid_json for s in scores) / n,
        shape_ok=sum(s.shape_ok for s in scores) / n,
        field_accuracy=sum(s.field_accuracy for s in scores) / n,
        exact_match=sum(s.exact for s in scores) / n,
        per_field={f: sum(f in s.correct_fields for s in scores) / n for f in FIELDS},
    )
