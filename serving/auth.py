"""Bearer API keys from a mounted Secret file, re-read when the file changes.

One key per line, optionally followed by its own rate limits (`rate_limit`):

    sk-team-a rpm=600 tpm=200000
    sk-batch-job tpm=2000000
    sk-no-limits-of-its-own

A budget a key's line does not name is the gateway's default (`--rate-limit-rpm/-tpm`).
Kubernetes updates a mounted Secret by swapping a symlink, so the file's identity (inode,
mtime, size) changes; we look at most once a second. A key file that disappears or cannot be
read, or that has a bad line, keeps the last good keys and says so in the log rather than
opening the gateway.
"""

from __future__ import annotations

import hmac
import math
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .rate_limit import Limits

log = logging.getLogger("kubetune.serving.auth")
_LIMIT_FIELDS = {"rpm": "requests_per_minute", "tpm": "tokens_per_minute"}


@dataclass(frozen=True)
class KeyEntry:
    key: bytes
    limits: Limits | None = None
    """The key's own limits; None: the gateway's defaults."""


def parse_key_entries(text: str, source: str = "API keys file") -> list[KeyEntry]:
    """One key per line with optional `rpm=N tpm=N`; blank lines and `#` comments ignored.

    Raises ValueError naming the file and line of every bad line.
    """
    entries, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        limits: dict[str, float] = {}
        for word in words[1:]:
            name, sep, value = word.partition("=")
            if not sep or name not in _LIMIT_FIELDS:
                errors.append(f"{source}: line {number}: {word!r}: expected rpm=N or tpm=N after the key")
                continue
            try:
                figure = float(value)
            except ValueError:
                figure = -1.0
            if not (math.isfinite(figure) and figure > 0):
                errors.append(f"{source}: line {number}: {name}={value!r}: expected a positive number")
                continue
            limits[_LIMIT_FIELDS[name]] = figure
        entries.append(KeyEntry(words[0].encode(), Limits(**limits) if limits else None))
    if errors:
        raise ValueError("; ".join(errors))
    return entries


class KeyFile:
    """The set of accepted keys, checked in constant time against every key."""

    def __init__(self, path: str | os.PathLike, *, check_interval: float = 1.0):
        self.path = Path(path)
        self.check_interval = check_interval
        self._signature: tuple | None = None
        self._checked = 0.0
        self._keys: list[KeyEntry] = []
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        try:
            st = self.path.stat()
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if not force and signature == self._signature:
                return
            keys = parse_key_entries(self.path.read_text(), f"API keys file {self.path}")
        except OSError as exc:
            if force and self._signature is None:
                raise FileNotFoundError(f"API keys file {self.path}: {exc.strerror or exc}") from exc
            log.error("API keys file %s unreadable (%s); keeping the %d keys loaded before",
                      self.path, exc, len(self._keys))
            return
        except ValueError as exc:
            if force and self._signature is None:
                raise
            log.error("%s; keeping the %d keys loaded before", exc, len(self._keys))
            self._signature = signature  # logged once per change of the file, not per request
            return
        if not keys:
            log.warning("API keys file %s holds no keys: every request will get 401", self.path)
        self._keys, self._signature = keys, signature
        log.info("loaded %d API keys from %s", len(keys), self.path)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self._reload()

    def lookup(self, presented: str) -> KeyEntry | None:
        """The entry of the presented key, or None; compared in constant time against every key."""
        self._maybe_reload()
        given = presented.encode()
        found = None
        for entry in self._keys:  # no early exit: time does not tell which key matched
            if hmac.compare_digest(given, entry.key):
                found = entry
        return found

    def check(self, presented: str) -> bool:
        return self.lookup(presented) is not None

    def __len__(self) -> int:
        return len(self._keys)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
