"""The gateway's background threads: safety scores in batches and the payload log writer.

Both take work from the event loop without waking a thread per request; these tests pin down
what that must not cost: batching actually happens, a waiting caller is not held back by the
linger, and close() (SIGTERM) loses nothing that was accepted.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from kubetune.common.safety import SafetyScore
from kubetune.serving.payload_log import PayloadLogger
from kubetune.serving.safety_batcher import SafetyBatcher


class RecordingScorer:
    """A scorer that records each batch it is given; flags responses containing 'bad'."""

    name = "recording"

    def __init__(self):
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def score_many(self, pairs):
        with self.lock:
            self.batches.append(len(pairs))
        return [SafetyScore("bad" in r, 0.9 if "bad" in r else 0.0, {"toxicity": 0.9} if "bad" in r else {},
                            self.name) for _, r in pairs]

    def score(self, prompt, response):
        return self.score_many([(prompt, response)])[0]


def test_lingering_scores_come_in_one_batch_and_close_scores_them_all():
    scorer = RecordingScorer()
    batcher = SafetyBatcher(scorer, max_batch=256, linger=30.0)  # never wakes by itself in this test
    got: dict[int, SafetyScore] = {}
    for i in range(50):
        batcher.submit("p", "bad" if i % 10 == 0 else f"fine {i}", lambda s, i=i: got.__setitem__(i, s))
    assert scorer.batches == []  # nothing scored yet: the batch is still filling
    batcher.close()
    assert scorer.batches == [50]
    assert sorted(got) == list(range(50))
    assert [i for i, s in got.items() if s.flagged] == [0, 10, 20, 30, 40]


def test_full_batch_goes_without_waiting_for_the_linger():
    scorer = RecordingScorer()
    batcher = SafetyBatcher(scorer, max_batch=8, linger=30.0)
    done = threading.Event()
    count = []

    def callback(score):
        count.append(score)
        if len(count) == 8:
            done.set()

    for i in range(8):
        batcher.submit("p", f"r{i}", callback)
    assert done.wait(10), "a full batch must be scored at once"
    assert scorer.batches == [8]
    batcher.close()


def test_awaited_score_takes_the_lingering_ones_along():
    scorer = RecordingScorer()
    batcher = SafetyBatcher(scorer, max_batch=256, linger=30.0)
    later = []
    for i in range(5):
        batcher.submit("p", f"r{i}", later.append)

    async def wait_for_one():
        return await asyncio.wait_for(batcher.score("p", "bad answer"), 10)

    score = asyncio.run(wait_for_one())
    assert score.flagged and score.categories == {"toxicity": 0.9}
    assert scorer.batches == [6] and len(later) == 5  # one batch: the waiting call and the five queued
    batcher.close()


def test_submit_after_close_is_scored_in_place():
    scorer = RecordingScorer()
    batcher = SafetyBatcher(scorer)
    batcher.close()
    got = []
    batcher.submit("p", "bad", got.append)
    assert got and got[0].flagged


def test_batcher_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_batch"):
        SafetyBatcher(RecordingScorer(), max_batch=0)


def test_payload_writer_close_writes_what_is_pending(tmp_path):
    """With a writer that would only wake once a minute, close() still writes every record."""
    logger = PayloadLogger(tmp_path, sample_rate=1.0, flush_interval=60.0)
    for i in range(200):
        logger.record({"id": f"req-{i}", "prompt": "p", "response": f"call me on +1 415 555 01{i % 100:02d}"})
    logger.close()
    lines = [json.loads(x) for x in (tmp_path / "payloads.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"req-{i}" for i in range(200)]
    assert all(r["response"] == "call me on [PHONE]" for r in lines)
    assert logger.written == 200


def test_payload_writer_flushes_on_its_own(tmp_path):
    logger = PayloadLogger(tmp_path, sample_rate=1.0, flush_interval=0.05)
    try:
        logger.record({"id": "req-1", "prompt": "p", "response": "r"})
        path = tmp_path / "payloads.jsonl"
        for _ in range(200):  # polls, up to 10 s: the writer must get there without close()
            if path.read_text():
                break
            threading.Event().wait(0.05)
        assert json.loads(path.read_text())["id"] == "req-1"
    finally:
        logger.close()
