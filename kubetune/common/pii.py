"""PII detection and redaction shared by data preparation, the gateway and monitoring.

Regex patterns plus checks that cut false positives (Luhn for card numbers, octet range for
IPv4). Redaction replaces each match with a typed placeholder such as `[EMAIL]` so text stays
readable and placeholders can be counted.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "ip": "[IP]",
    "key": "[KEY]",
}

# Order matters: keys and cards before phones, which would otherwise eat their digits.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "key",
        re.compile(
            r"\b(?:AKIA[0-9A-Z]{16}"  # AWS access key id
            r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style secret
            r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
            r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
            r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face tokens
            r"|AIza[0-9A-Za-z_-]{35})"  # Google API key
            r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
        ),
    ),
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("card", re.compile(r"\b(?:\d[ -]?){12,18}\d\b")),
    ("ip", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b")),
    (
        "phone",
        re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?!\w)"),
    ),
]


def _luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _valid(kind: str, text: str) -> bool:
    if kind == "card":
        digits = re.sub(r"\D", "", text)
        return 13 <= len(digits) <= 19 and _luhn_ok(digits)
    if kind == "ip":
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return False
        return True
    return True


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Redaction:
    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def find_pii(text: str) -> list[PiiMatch]:
    """Non-overlapping PII matches, earliest first."""
    taken: list[tuple[int, int]] = []
    found: list[PiiMatch] = []
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            span = m.span()
            if any(span[0] < end and start < span[1] for start, end in taken):
                continue
            if not _valid(kind, m.group()):
                continue
            taken.append(span)
            found.append(PiiMatch(kind, span[0], span[1], m.group()))
    return sorted(found, key=lambda m: m.start)


def redact(text: str) -> Redaction:
    """Text with every PII match replaced by its placeholder, and counts by kind."""
    matches = find_pii(text)
    if not matches:
        return Redaction(text, {})
    out, pos = [], 0
    for m in matches:
        out.append(text[pos : m.start])
        out.append(PLACEHOLDERS[m.kind])
        pos = m.end
    out.append(text[pos:])
    return Redaction("".join(out), dict(Counter(m.kind for m in matches)))


def contains_pii(text: str) -> bool:
    return bool(find_pii(text))
