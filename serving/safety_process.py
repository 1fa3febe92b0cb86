"""A CPU safety scorer run in a child process, so its model never holds the gateway's GIL.

The offline scorer (scikit-learn, GIL-holding tokenisation) takes tens of milliseconds per
batch; in the gateway's own process that time stalls the event loop and every stream on it.
Here the child builds the scorer itself from its name (nothing unpicklable crosses), batches of
(prompt, response) strings go over a pipe and scores come back. The caller (the batcher's
thread) only pickles and waits on the pipe, which releases the GIL.

Supervised: when the child dies or hangs, it is restarted and the batch in flight is scored
again; a batch that fails twice comes back unscored (None), which the payload log records as
`safety: null`, never as safe.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence

from kubetune.common.safety import SafetyScore

log = logging.getLogger("kubetune.serving.safety")

# A batch of 256 takes ~80 ms on one core; a child that says nothing for this long is stuck.
BATCH_TIMEOUT_SECONDS = 120.0
START_TIMEOUT_SECONDS = 120.0
# Scores are not awaited (except with the block action): a batch of 256 takes ~80 ms of CPU that
# would otherwise pre-empt the event loop sharing its core (the p99 of every stream on it).
CHILD_NICENESS = 10


def _child(conn, kind: str, endpoint: str | None) -> None:
    """The child's loop: build the scorer, answer batches until the pipe closes or None arrives."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when scoring stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:  # background work: when the scorer and the event loop want the same core, the loop wins
        os.nice(CHILD_NICENESS)
    except OSError:
        pass
    from kubetune.common.safety import make_scorer

    try:
        scorer = make_scorer(kind, endpoint)
        scorer.score("warm-up", "warm-up")  # load the model now, not on the first real batch
    except Exception as exc:  # reported to the parent, which turns it into a clear error
        conn.send(("error", f"{exc.__class__.__name__}: {exc}"))
        return
    conn.send(("ready", getattr(scorer, "name", kind)))
    while True:
        try:
            pairs = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if pairs is None:
            return
        conn.send(_score_all(scorer, pairs))


def _score_all(scorer, pairs) -> list:
    """Scores as plain tuples (flagged, score, categories, scorer) or None where scoring failed."""
    try:
        many = getattr(scorer, "score_many", None)
        scores = list(many(pairs)) if many is not None else [scorer.score(p, r) for p, r in pairs]
    except Exception:
        scores = []
        for p, r in pairs:
            try:
                scores.append(scorer.score(p, r))
            except Exception:
                scores.append(None)
    return [None if s is None else (s.flagged, s.score, dict(s.categories), s.scorer) for s in scores]


class ScorerProcessError(RuntimeError):
    pass


class ProcessScorer:
    """`score_many` in a supervised child process; same interface as the scorer it wraps."""

    def __init__(self, kind: str = "offline", endpoint: str | None = None, *,
                 batch_timeout: float = BATCH_TIMEOUT_SECONDS, start_timeout: float = START_TIMEOUT_SECONDS):
        self.kind = kind
        self.endpoint = endpoint
        self.name = kind
        self.batch_timeout = batch_timeout
        self.start_timeout = start_timeout
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # one batch on the pipe at a time
        self._proc = None
        self._conn = None
        self._closed = False
        with self._lock:
            self._start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child, args=(child, self.kind, self.endpoint),
                                 name=f"kubetune-safety-{self.kind}", daemon=True)
        proc.start()
        child.close()
        try:
            if not parent.poll(self.start_timeout):
                raise ScorerProcessError(f"did not start within {self.start_timeout:.0f} s")
            status, detail = parent.recv()
        except (EOFError, OSError) as exc:
            proc.join(1)
            raise ScorerProcessError(f"exited while starting (exit code {proc.exitcode}): {exc}") from None
        except ScorerProcessError:
            proc.kill()
            proc.join(5)
            raise
        if status != "ready":
            proc.join(5)
            raise ScorerProcessError(f"could not build the {self.kind} scorer: {detail}")
        self._proc, self._conn, self.name = proc, parent, detail
        log.info("safety scorer %s runs in process %d", detail, proc.pid)

    def _stop_child(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5)

    def _round_trip(self, pairs: list) -> list:
        if self._proc is None:
            self._start()
        self._conn.send(pairs)
        if not self._conn.poll(self.batch_timeout):
            raise TimeoutError(f"no answer within {self.batch_timeout:.0f} s")
        return self._conn.recv()

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[SafetyScore | None]:
        """Scores in order; None for a pair that could not be scored (the child died twice on it)."""
        pairs = [(str(p), str(r)) for p, r in pairs]
        if not pairs:
            return []
        with self._lock:
            if self._closed:
                raise ScorerProcessError("the safety scorer process was closed")
            for attempt in (1, 2):
                try:
                    raw = self._round_trip(pairs)
                    return [None if t is None else SafetyScore(flagged=t[0], score=t[1], categories=t[2], scorer=t[3])
                            for t in raw]
                except (EOFError, OSError, TimeoutError, ScorerProcessError) as exc:
                    code = self._proc.exitcode if self._proc is not None else None
                    self._stop_child()
                    self.restarts += 1
                    log.error("safety scorer process failed on a batch of %d (%s: %s; exit code %s); %s",
                              len(pairs), exc.__class__.__name__, exc, code,
                              "restarting it and scoring the batch again" if attempt == 1
                              else "the batch stays unscored")
        return [None] * len(pairs)

    def score(self, prompt: str, response: str) -> SafetyScore:
        (score,) = self.score_many([(prompt, response)])
        if score is None:
            raise ScorerProcessError("the safety scorer process could not score this response")
        return score

    def close(self) -> None:
        """Stop the child (after the batch in flight, if any). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._conn is not None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
            if self._proc is not None:
                self._proc.join(10)
            self._stop_child()
