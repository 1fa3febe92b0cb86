"""The local engine batches concurrent requests: real transformers generation on the tiny model,
in-process (no HTTP: the request path is covered by test_serving_local_engine.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kubetune.serving.engine_local import GenerationJob, LocalEngine, _batch_key

PROMPTS = ["The quick brown fox", "Hello", "A much longer prompt than the others, so the batch is left-padded"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    # A generous window: the test's submissions must land in one batch even on a loaded machine.
    return LocalEngine(tiny_model_dir, served_name="tiny", threads=1, max_batch_size=4, batch_window_s=0.5)


def _job(engine, prompt, max_tokens=12, stop=(), temperature=0.0, seed=None, model="tiny"):
    ids = engine.tokenizer(prompt)["input_ids"]
    return GenerationJob("completion", model, ids, max_tokens, temperature, 1.0, seed, list(stop))


@pytest.fixture()
def batch_sizes(engine, monkeypatch):
    """Records the size of every generate call the engine makes."""
    sizes: list[int] = []
    real = engine._generate_batch

    def spy(items):
        sizes.append(len(items))
        return real(items)

    monkeypatch.setattr(engine, "_generate_batch", spy)
    return sizes


def test_a_left_padded_batch_answers_exactly_like_one_request_at_a_time(engine):
    alone = [engine._generate(_job(engine, p), None) for p in PROMPTS]
    together = engine._generate_batch([(_job(engine, p), None) for p in PROMPTS])
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    assert [r.prompt_tokens for r in together] == [len(engine.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert len({r.text for r in alone}) > 1  # different prompts, different answers: the rows did not mix


def test_each_row_keeps_its_own_limits_and_stream(engine):
    full = engine._generate(_job(engine, PROMPTS[0], max_tokens=20), None).text
    stop = full[4:7]
    pieces: dict[int, list[str | None]] = {0: [], 1: [], 2: []}
    results = engine._generate_batch([
        (_job(engine, PROMPTS[0], max_tokens=20, stop=[stop]), pieces[0].append),
        (_job(engine, PROMPTS[1], max_tokens=3), pieces[1].append),
        (_job(engine, PROMPTS[2], max_tokens=20), pieces[2].append),
    ])
    assert results[0].finish_reason == "stop" and stop not in results[0].text and full.startswith(results[0].text)
    assert results[1].completion_tokens == 3 and results[1].finish_reason == "length"
    assert results[2].completion_tokens == 20 and results[2].finish_reason == "length"
    for i, result in enumerate(results):
        assert pieces[i][-1] is None  # the end of the stream
        assert "".join(pieces[i][:-1]) == result.text


def test_concurrent_requests_share_one_generate_call(engine, batch_sizes):
    async def send_together():
        jobs = [_job(engine, p) for p in PROMPTS]  # tokenised first: submitted back to back, within one window
        return await asyncio.gather(*[engine._submit(job) for job in jobs])

    results = asyncio.run(send_together())
    assert batch_sizes == [3]
    alone = [engine._generate(_job(engine, p), None).text for p in PROMPTS]
    assert [r.text for r in results] == alone


def test_batches_never_mix_models_or_sampling_settings(engine, batch_sizes):
    async def send():
        jobs = [
            _job(engine, PROMPTS[0]),
            _job(engine, PROMPTS[1], temperature=0.7),
            _job(engine, PROMPTS[2]),
            _job(engine, PROMPTS[0], temperature=0.7, seed=3),
        ]
        return await asyncio.gather(*[engine._submit(job) for job in jobs])

    results = asyncio.run(send())
    assert sorted(batch_sizes) == [1, 1, 2]  # the two greedy ones together; sampled and seeded apart
    assert all(r.completion_tokens >= 1 for r in results)
    assert _batch_key(_job(engine, "x")) != _batch_key(_job(engine, "x", model="adapter"))
    assert _batch_key(_job(engine, "x", temperature=0.7, seed=1)) is None


def test_more_requests_than_the_batch_size_are_all_answered(engine, batch_sizes):
    async def send():
        return await asyncio.gather(*[engine._submit(_job(engine, f"{p} {i}", max_tokens=4))
                                      for i, p in enumerate(PROMPTS * 3)])

    results = asyncio.run(send())
    assert len(results) == 9 and all(r.completion_tokens == 4 for r in results)
    assert sum(batch_sizes) == 9 and max(batch_sizes) <= engine.max_batch_size


def test_a_request_cancelled_in_a_batch_stops_alone(engine):
    job = _job(engine, PROMPTS[0], max_tokens=60)
    other = _job(engine, PROMPTS[1], max_tokens=60)
    seen = threading.Event()

    def on_text(piece):
        if piece is not None and not seen.is_set():
            seen.set()
            job.cancelled.set()  # what the HTTP handler does when its client disconnects

    cut, kept = engine._generate_batch([(job, on_text), (other, None)])
    assert cut.completion_tokens < 10 and cut.finish_reason == "stop"
    alone = engine._generate(_job(engine, PROMPTS[1], max_tokens=60), None)
    assert kept.text == alone.text and kept.completion_tokens == alone.completion_tokens > 10


def test_bad_batch_settings_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="max_batch_size"):
        LocalEngine(tiny_model_dir, max_batch_size=0)


def _margins(engine, prompt, max_tokens):
    """The solo run's top-two logit margin at each step."""
    import torch

    ids = torch.tensor([engine.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                    do_sample=False, pad_token_id=engine.pad_id, output_logits=True,
                                    return_dict_in_generate=True, eos_token_id=engine.eos_ids or None)
    return [float(t[0] - t[1]) for t in (torch.topk(step[0].float(), 2).values for step in out.logits)]


def test_a_greedy_row_at_a_near_tie_is_finished_alone_and_its_stream_goes_on(engine, monkeypatch):
    """A row that meets a margin under the engine's near-tie threshold stops in the batch and is
    generated again alone: the client sees one continuous stream, and the answer of the request alone."""
    prompt, max_tokens = PROMPTS[0], 12
    margins = _margins(engine, prompt, max_tokens)
    # The first step after the second whose margin is below all before it: the row streams that
    # many tokens in the batch, then meets the "near-tie" and goes on alone.
    step = next(k for k in range(2, len(margins)) if margins[k] < min(margins[:k]) - 2e-3)
    monkeypatch.setattr(engine, "near_tie", margins[step] + 1e-3)
    alone = engine._generate(_job(engine, prompt, max_tokens), None)
    pieces: list[str | None] = []
    before = engine.regenerated_alone
    results = engine._generate_batch([(_job(engine, PROMPTS[2], max_tokens), None),
                                      (_job(engine, prompt, max_tokens), pieces.append)])
    assert engine.regenerated_alone > before
    assert results[1].text == alone.text and results[1].completion_tokens == alone.completion_tokens
    assert pieces[-1] is None and pieces.count(None) == 1
    assert "".join(pieces[:-1]) == alone.text  # no piece repeated, none lost
    assert len(pieces) > 2  # some of the text came from the batch before the near-tie


def test_greedy_answers_do_not_depend_on_the_batching(engine):
    """Each prompt alone, in batches of two and in one batch of all: the same answers."""
    prompts = PROMPTS + ["Once upon a time", "1, 2, 3,"]
    alone = [engine._generate(_job(engine, p), None).text for p in prompts]
    pairs = [r.text for i in range(0, len(prompts), 2)
             for r in engine._generate_batch([(_job(engine, p), None) for p in prompts[i:i + 2]])]
    together = [r.text for r in engine._generate_batch([(_job(engine, p), None) for p in prompts])]
    assert pairs == alone and together == alone
