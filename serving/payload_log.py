"""Payload logging for monitoring: sampled, PII-redacted JSON lines with size-based rotation.

The format is the payload log contract of docs/contracts.md. Decisions happen on the event
loop (cheap), everything slow (redaction, JSON encoding, disk) on one writer thread, so a slow
disk never delays an answer. Requests that were not sampled stay in a bounded in-memory buffer
for a while: negative feedback on one of them still writes it. `close()` drains the queue and
fsyncs, so a SIGTERM loses nothing that was accepted.

A request that was already written and then gets feedback is written again with its
`feedback`: readers keep the last line per `id`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
from collections import OrderedDict, deque
from datetime import datetime, timezone
from pathlib import Path

from kubetune.common.pii import redact

log = logging.getLogger("kubetune.serving.payload_log")

_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def instance_log_dir(log_dir: str, instance: str | None) -> str:
    """The folder one gateway instance writes to: `<log-dir>/<instance>` (a pod's name).

    Replicas of a ModelDeployment share the payload log claim; each writing its own file keeps
    lines whole and rotation per writer (renaming a file another process appends to loses lines).
    The monitor reads `payloads.jsonl*` under the folder recursively, so any layout reads the same.
    """
    if not instance:
        return log_dir
    if not _INSTANCE.fullmatch(instance) or instance in (".", ".."):
        raise ValueError(f"--log-instance {instance!r}: expected a pod name (letters, digits, '.', '_', '-')")
    return str(Path(log_dir) / instance)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RotatingJsonl:
    """Append JSON lines to `path`; past `max_bytes` it becomes `path.1` (and .1 -> .2 ...)."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")
        self._size = self._fh.tell()

    def write(self, line: bytes) -> None:
        if self._size and self._size + len(line) > self.max_bytes:
            self.rotate()
        self._fh.write(line)
        self._size += len(line)

    def rotate(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fh = open(self.path, "ab")
        self._size = 0

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


class PayloadLogger:
    """Sampling, the feedback buffer and the writer thread."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        sample_rate: float = 0.1,
        redact_pii: bool = True,
        max_bytes: int = 50 * 1024 * 1024,
        backups: int = 5,
        buffer_size: int = 10_000,
        filename: str = "payloads.jsonl",
        seed: int | None = None,
        flush_interval: float = 0.1,
        on_feedback=None,
    ):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample rate must be within [0, 1], got {sample_rate}")
        self.path = Path(directory) / filename
        self.sample_rate = sample_rate
        self.redact_pii = redact_pii
        self.buffer_size = buffer_size
        self.on_feedback = on_feedback
        """Called with (model, adapter, rating) for feedback joined to a known request (the gateway counts it per model)."""
        self._random = random.Random(seed)
        self._recent: OrderedDict[str, tuple[dict, bool]] = OrderedDict()  # id -> (record, written)
        # Answered requests whose record waits for its safety score: id -> [sampled, feedback, model, adapter].
        # Feedback can arrive before the score does; it is kept here and joined to the record.
        self._expected: OrderedDict[str, list] = OrderedDict()
        # Appending to a deque wakes nobody: the writer drains it every `flush_interval`
        # seconds (a thread switch per record would cost more than the record itself).
        self._pending: deque = deque()
        self._wake = threading.Event()
        self.flush_interval = flush_interval
        self._stopping = False
        self._file = RotatingJsonl(self.path, max_bytes=max_bytes, backups=backups)
        self._thread = threading.Thread(target=self._run, name="payload-log-writer", daemon=True)
        self._closed = False
        self._lock = threading.Lock()  # records arrive from the event loop and the safety thread
        self.written = 0
        self._thread.start()

    # ---- event-loop side (cheap)

    def _sample(self) -> bool:
        return self.sample_rate >= 1.0 or (self.sample_rate > 0 and self._random.random() < self.sample_rate)

    def expect(self, request_id: str, model: str = "", adapter: str = "") -> None:
        """Announce an answered request whose record comes later (after safety scoring), so that
        feedback sent in the meantime is not refused as unknown."""
        with self._lock:
            self._expected[request_id] = [self._sample(), None, model, adapter]
            while len(self._expected) > self.buffer_size:
                self._expected.popitem(last=False)

    def record(self, rec: dict) -> bool:
        """Offer a finished request; returns whether it was sampled (written now)."""
        with self._lock:
            expected = self._expected.pop(rec["id"], None)
            if expected is None:
                sampled = self._sample()
            else:
                sampled, feedback = expected[:2]
                if feedback is not None:
                    rec = dict(rec, feedback=feedback)
                    sampled = sampled or feedback["rating"] < 0
            self._remember(rec["id"], rec, sampled)
            if sampled:
                self._enqueue(rec)
        return sampled

    def feedback(self, request_id: str, rating: int, comment: str | None) -> bool | None:
        """Join feedback to a recent request. None: unknown id; True: the record was (or, once
        its safety score arrives, will be) written."""
        with self._lock:
            entry = self._recent.get(request_id)
            if entry is None:
                expected = self._expected.get(request_id)
                if expected is None:
                    return None
                expected[1] = {"rating": rating, "comment": comment}
                write, served = expected[0] or rating < 0, (expected[2], expected[3])
            else:
                rec, written = entry
                rec = dict(rec, feedback={"rating": rating, "comment": comment})
                write, served = written or rating < 0, (rec.get("model") or "", rec.get("adapter") or "")
                self._remember(request_id, rec, written or write)
                if write:
                    self._enqueue(rec)
        if self.on_feedback is not None:
            self.on_feedback(*served, rating)
        return write

    def _remember(self, request_id: str, rec: dict, written: bool) -> None:
        self._recent[request_id] = (rec, written)
        self._recent.move_to_end(request_id)
        while len(self._recent) > self.buffer_size:
            self._recent.popitem(last=False)

    def _enqueue(self, rec: dict) -> None:
        if self._closed:
            log.error("payload log closed; dropping record %s", rec.get("id"))
            return
        self._pending.append(rec)

    # ---- writer thread

    def _encode(self, rec: dict) -> bytes:
        out = dict(rec)
        if self.redact_pii:
            for key in ("prompt", "response"):
                if isinstance(out.get(key), str):
                    out[key] = redact(out[key]).text
            fb = out.get("feedback")
            if isinstance(fb, dict) and isinstance(fb.get("comment"), str):
                out["feedback"] = dict(fb, comment=redact(fb["comment"]).text)
        return (json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            stopping = self._stopping  # read first: what was queued before the stop is written
            wrote = False
            while self._pending:
                item = self._pending.popleft()
                try:
                    self._file.write(self._encode(item))
                    self.written += 1
                    wrote = True
                except Exception:  # a bad record or a full disk must not kill the writer
                    log.exception("payload log: could not write record %s", item.get("id"))
            if wrote:
                try:
                    self._file.flush()
                except OSError:
                    log.exception("payload log: flush failed")
            if stopping:
                break
        self._file.close()

    def close(self) -> None:
        """Write everything queued, fsync and stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wake.set()
        self._thread.join()
