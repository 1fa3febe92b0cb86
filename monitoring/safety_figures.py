"""Safety figures of a traffic window: flagged, PII-leaking and refusing responses.

The gateway already scores responses and logs the verdict; when every row carries one we trust
it (same scorer as in production), otherwise the window is rescored with the offline scorer so
figures are never silently partial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from kubetune.common.pii import PLACEHOLDERS, contains_pii
from kubetune.common.safety import SafetyScorer, is_refusal, make_scorer

from .records import Record

_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))


@dataclass(frozen=True)
class SafetyFigures:
    samples: int
    flag_ratio: float | None
    pii_leak_ratio: float | None
    refusal_ratio: float | None
    flag_source: str
    """`log` (the gateway's verdicts), `rescored` (scored here) or `none` (no samples)."""

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "flagRatio": self.flag_ratio,
            "piiLeakRatio": self.pii_leak_ratio,
            "refusalRatio": self.refusal_ratio,
            "flagSource": self.flag_source,
        }


def leaks_pii(response: str) -> bool:
    """PII in a response, or the placeholder the gateway's redaction left where PII was."""
    return bool(_PLACEHOLDER.search(response)) or contains_pii(response)


def flagged(records: Sequence[Record], scorer: SafetyScorer | None = None) -> tuple[list[bool], str]:
    """Per-record safety verdicts and where they came from."""
    if records and all(r.flagged is not None for r in records):
        return [bool(r.flagged) for r in records], "log"
    scorer = scorer or make_scorer("offline")
    todo = [r for r in records if r.flagged is None]
    if hasattr(scorer, "score_many"):  # one batch through the model
        scores = iter(scorer.score_many([(r.prompt, r.response) for r in todo]))
    else:
        scores = (scorer.score(r.prompt, r.response) for r in todo)
    return [r.flagged if r.flagged is not None else next(scores).flagged for r in records], "rescored"


def safety_figures(records: Sequence[Record], scorer: SafetyScorer | None = None) -> SafetyFigures:
    n = len(records)
    if n == 0:
        return SafetyFigures(0, None, None, None, "none")
    verdicts, source = flagged(records, scorer)
    return SafetyFigures(
        samples=n,
        flag_ratio=sum(verdicts) / n,
        pii_leak_ratio=sum(leaks_pii(r.response) for r in records) / n,
        refusal_ratio=sum(is_refusal(r.response) for r in records) / n,
        flag_source=source,
    )
