"""Bearer API keys from a mounted Secret file, re-read when the file changes.

Kubernetes updates a mounted Secret by swapping a symlink, so the file's identity (inode,
mtime, size) changes; we look at most once a second. A key file that disappears or cannot be
read keeps the last good keys and says so in the log rather than opening the gateway.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("kubetune.serving.auth")


def parse_keys(text: str) -> list[bytes]:
    """One key per line; blank lines and `#` comments ignored."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line.encode())
    return keys


class KeyFile:
    """The set of accepted keys, checked in constant time against every key."""

    def __init__(self, path: str | os.PathLike, *, check_interval: float = 1.0):
        self.path = Path(path)
        self.check_interval = check_interval
        self._signature: tuple | None = None
        self._checked = 0.0
        self._keys: list[bytes] = []
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        try:
            st = self.path.stat()
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if not force and signature == self._signature:
                return
            keys = parse_keys(self.path.read_text())
        except OSError as exc:
            if force and self._signature is None:
                raise FileNotFoundError(f"API keys file {self.path}: {exc.strerror or exc}") from exc
            log.error("API keys file %s unreadable (%s); keeping the %d keys loaded before",
                      self.path, exc, len(self._keys))
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

    def check(self, presented: str) -> bool:
        self._maybe_reload()
        given = presented.encode()
        ok = False
        for key in self._keys:  # no early exit: time does not tell which key matched
            ok |= hmac.compare_digest(given, key)
        return ok

    def __len__(self) -> int:
        return len(self._keys)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
