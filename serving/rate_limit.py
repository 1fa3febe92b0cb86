"""Per-key request and token budgets (token buckets), shared by the gateway workers of a pod.

Each API key has two buckets: requests per minute and tokens per minute. A bucket holds at most
one minute's budget and refills continuously, so a key may burst up to its per-minute figure and
then goes at the steady rate. A request is admitted when both buckets hold enough; it is charged
its prompt (estimated at 4 characters a token) plus the completion tokens it may generate
(`max_tokens`), and the charge is corrected to the real usage when the answer is complete, as
OpenAI's own limits do. A refused request learns how long until it would fit (`Retry-After`); a
request that needs more than a minute's token budget is refused whatever the bucket holds.

With `--workers N` the buckets live in one small file of the workers' private folder, mapped
into every worker and updated under an exclusive `flock`, so the limits are the pod's, not N
times them. Keys are stored by the first 8 bytes of their SHA-256, never in clear.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

SLOTS = 4096
"""Keys one pod can track; a slot is reused by a key whose bucket has refilled completely."""
_SLOT = struct.Struct("<8sddd")  # key id, request tokens, budget tokens, last update (monotonic seconds)
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Limits:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute is None and self.tokens_per_minute is None

    def or_else(self, defaults: "Limits") -> "Limits":
        """These limits, with each budget left unset taken from `defaults`."""
        return Limits(
            self.requests_per_minute if self.requests_per_minute is not None else defaults.requests_per_minute,
            self.tokens_per_minute if self.tokens_per_minute is not None else defaults.tokens_per_minute)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0
    """Seconds until the request would fit (0 when allowed)."""
    limit: str = ""
    """Which budget refused it: requests or tokens."""


def key_id(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()[:8]


def key_label(key: str | bytes) -> str:
    """The metric label of a key: a short hash, never the key."""
    return key_id(key).hex()


def estimate_tokens(prompt: str, max_tokens: int) -> int:
    return math.ceil(len(prompt) / CHARS_PER_TOKEN) + max_tokens


def _refill(level: float, capacity: float, elapsed: float) -> float:
    return min(capacity, level + capacity * elapsed / 60.0)


class Buckets:
    """Token buckets in a byte buffer: process memory, or a file mapped by every worker."""

    def __init__(self, path: str | os.PathLike | None = None, *, clock=time.monotonic):
        self.clock = clock
        self._fd: int | None = None
        size = SLOTS * _SLOT.size
        if path is None:
            self._buf = bytearray(size)
        else:
            self._fd = os.open(Path(path), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._buf = mmap.mmap(self._fd, size)

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive across the workers mapping the file; a no-op for process memory."""
        if self._fd is None:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _slot(self, kid: bytes, now: float) -> int:
        """The slot of `kid`: its own, else an empty one, else one whose bucket is full again."""
        start = int.from_bytes(kid[:4], "little") % SLOTS
        reusable = None
        for step in range(SLOTS):
            index = (start + step) % SLOTS
            owner, _, _, updated = _SLOT.unpack_from(self._buf, index * _SLOT.size)
            if owner == kid:
                return index
            if owner == bytes(8):
                return reusable if reusable is not None else index
            if reusable is None and now - updated > 60.0:
                reusable = index  # untouched for a minute: refilled whatever its limits were
        if reusable is None:
            raise RuntimeError(f"rate limiter: all {SLOTS} key slots are in use within the last minute")
        return reusable

    def take(self, key: str | bytes, limits: Limits, tokens: int) -> Decision:
        """Charge one request and `tokens` to the key, or say how long until it would fit."""
        if limits.unlimited:
            return Decision(True)
        kid = key_id(key)
        rpm = limits.requests_per_minute
        tpm = limits.tokens_per_minute
        with self._locked():
            now = self.clock()
            index = self._slot(kid, now)
            owner, requests, budget, updated = _SLOT.unpack_from(self._buf, index * _SLOT.size)
            if owner != kid:
                requests, budget, updated = rpm or 0.0, tpm or 0.0, now
            elapsed = max(0.0, now - updated)
            requests = _refill(requests, rpm, elapsed) if rpm else 0.0
            budget = _refill(budget, tpm, elapsed) if tpm else 0.0
            waits = []
            if rpm and requests < 1:
                waits.append(((1 - requests) * 60.0 / rpm, "requests"))
            if tpm and tokens > tpm:  # never fits: asking again in a minute will not help either
                return Decision(False, 60.0, "tokens")
            if tpm and budget < tokens:
                waits.append(((tokens - budget) * 60.0 / tpm, "tokens"))
            if waits:
                wait, which = max(waits)
                _SLOT.pack_into(self._buf, index * _SLOT.size, kid, requests, budget, now)
                return Decision(False, wait, which)
            if rpm:
                requests -= 1
            if tpm:
                budget -= tokens
            _SLOT.pack_into(self._buf, index * _SLOT.size, kid, requests, budget, now)
        return Decision(True)

    def settle(self, key: str | bytes, limits: Limits, charged: int, used: int) -> None:
        """Correct a charge to the real usage (a refund when the answer was shorter)."""
        if not limits.tokens_per_minute or charged == used:
            return
        kid = key_id(key)
        with self._locked():
            index = self._slot(kid, self.clock())
            owner, requests, budget, updated = _SLOT.unpack_from(self._buf, index * _SLOT.size)
            if owner != kid:
                return  # evicted meanwhile: it has refilled anyway
            budget = min(limits.tokens_per_minute, budget + charged - used)
            _SLOT.pack_into(self._buf, index * _SLOT.size, kid, requests, budget, updated)
