"""The local engine's generation loop in-process on the tiny model: cancellation (what a client
disconnect triggers), stop strings, and request validation with vLLM's messages."""

from __future__ import annotations

import pytest

from kubetune.serving.engine_local import GenerationJob, LocalEngine
from kubetune.serving.errors import ApiError


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return LocalEngine(tiny_model_dir, served_name="tiny", threads=1)


def _job(engine, max_tokens=200, stop=()):
    ids = engine.tokenizer("The quick brown fox")["input_ids"]
    return GenerationJob("completion", "tiny", ids, max_tokens, 0.0, 1.0, None, list(stop))


def test_cancel_stops_generation_early(engine):
    job = _job(engine)
    pieces = []

    def on_text(piece):
        if piece is not None:
            pieces.append(piece)
            if len(pieces) == 3:
                job.cancelled.set()  # what the stream handler does when the client is gone

    result = engine._generate(job, on_text)
    assert result.completion_tokens < 20  # far from the 200 asked for
    full = engine._generate(_job(engine), None)
    assert full.completion_tokens > result.completion_tokens


def test_stop_string_cuts_the_text(engine):
    full = engine._generate(_job(engine, max_tokens=30), None).text
    assert len(full) > 6
    stop = full[3:6]
    cut = engine._generate(_job(engine, max_tokens=30, stop=[stop]), None)
    assert stop not in cut.text and full.startswith(cut.text) and cut.finish_reason == "stop"


def test_request_validation(engine):
    with pytest.raises(ApiError) as err:
        engine._job("completion", {"model": "tiny", "prompt": "x", "max_tokens": 100_000})
    assert err.value.status == 400 and "maximum context length is 512" in err.value.message
    with pytest.raises(ApiError) as err:
        engine._job("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2})
    assert err.value.param == "n"
    with pytest.raises(ApiError) as err:
        engine._job("completion", {"model": "tiny", "prompt": "x", "temperature": 3})
    assert err.value.param == "temperature"
    job = engine._job("chat", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert job.max_tokens == 64 and job.temperature == 1.0
    assert engine.tokenizer.decode(job.prompt_ids).endswith("<|im_start|>assistant\n")
