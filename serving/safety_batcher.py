"""Safety scoring off the event loop, in batches.

The offline scorer may run a scikit-learn model (milliseconds per call, far more than the
gateway's own work per request), and a Llama Guard scorer is a network call. One worker
thread takes every pending (prompt, response) pair at once and scores them with
`score_many` when the scorer has it (one model call for the batch). Callers either await the
score (block mode, the flag header) or hand a callback that runs on the worker thread once the
score exists (logs and metrics after the answer was sent).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Callable

from kubetune.common.safety import SafetyScore, SafetyScorer

log = logging.getLogger("kubetune.serving.safety")

_STOP = object()
Callback = Callable[[SafetyScore | None], None]


class SafetyBatcher:
    def __init__(self, scorer: SafetyScorer, *, max_batch: int = 64):
        self.scorer = scorer
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="safety-scorer", daemon=True)
        self._thread.start()

    def submit(self, prompt: str, response: str, callback: Callback) -> None:
        """Score later; `callback(score)` runs on the worker thread (None if scoring failed)."""
        if self._closed:  # shutting down: score here rather than lose the record
            callback(self._score_batch([(prompt, response)])[0])
            return
        self._queue.put((prompt, response, callback))

    async def score(self, prompt: str, response: str) -> SafetyScore | None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve(score):
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(score))

        self.submit(prompt, response, resolve)
        return await future

    def _score_batch(self, pairs: list[tuple[str, str]]) -> list[SafetyScore | None]:
        try:
            many = getattr(self.scorer, "score_many", None)
            if many is not None:
                return list(many(pairs))
            return [self.scorer.score(p, r) for p, r in pairs]
        except Exception:
            log.exception("safety scorer %s failed on a batch of %d; scoring one by one",
                          getattr(self.scorer, "name", "?"), len(pairs))
        out: list[SafetyScore | None] = []
        for p, r in pairs:
            try:
                out.append(self.scorer.score(p, r))
            except Exception:
                log.exception("safety scorer failed; the response stays unscored")
                out.append(None)
        return out

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < self.max_batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in items):
                stop = True
                items = [item for item in items if item is not _STOP]
                while True:  # everything queued before the stop still gets scored
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            if not items:
                continue
            scores = self._score_batch([(p, r) for p, r, _ in items])
            for (_, _, callback), score in zip(items, scores):
                try:
                    callback(score)
                except Exception:
                    log.exception("safety callback failed")

    def close(self) -> None:
        """Score everything pending, run its callbacks, stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
