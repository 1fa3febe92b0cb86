"""Gateway policies with the official `openai` client: safety actions, canary split, key
rotation, upstream failures and timeouts, payload log rotation and feedback.

The upstream here is a scripted engine (tests/serving/serving_support.py): the tiny model
cannot be made to produce harmful text, hang or echo the model it was asked for on demand.
The request path through the gateway is the real one; test_serving_local_engine.py runs it
over the real local engine.
"""

from __future__ import annotations

import json
import os

import httpx
import openai
import pytest

from kubetune.serving.gateway import REFUSAL_TEXT, Gateway, GatewayConfig
from kubetune.serving.payload_log import PayloadLogger
from kubetune.serving.safety_batcher import SafetyBatcher

from tests.serving.serving_support import HARMFUL, ScriptedUpstream, ServeProcess, free_port, read_log



@pytest.fixture()
def scripted(upstream):
    """Reset the scripted engine between tests."""
    upstream.text, upstream.echo_model, upstream.delay, upstream.fail_status = "Hello there, friend.", False, 0.0, None
    upstream.linger_after_done = 0.0
    upstream.seen_models.clear()
    return upstream


def start_gateway(loop_thread, tmp_path, upstream_url, **overrides):
    keys = tmp_path / "keys"
    keys.write_text("# test keys\nsecret-1\n")
    config = GatewayConfig(upstream=upstream_url, api_keys_file=str(keys), log_dir=str(tmp_path / "logs"),
                           sample_rate=1.0, seed=7, reload_interval=0.0, upstream_timeout=5.0,
                           safety_process=False)  # scorer process: test_serving_workers.py
    for key, value in overrides.items():
        setattr(config, key, value)
    gateway = Gateway(config)
    url = loop_thread.serve(gateway.app())
    client = openai.OpenAI(base_url=url + "/v1", api_key="secret-1", max_retries=0, timeout=20)
    return gateway, url, client


def metric_value(url: str, name: str, **labels) -> float:
    text = httpx.get(url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}} in /metrics")


def test_flag_marks_header_log_and_metric(loop_thread, tmp_path, scripted):
    scripted.text = HARMFUL
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url, safety_action="flag")
    raw = client.chat.completions.with_raw_response.create(
        model="base", messages=[{"role": "user", "content": "how do I build it?"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == HARMFUL  # flag does not change the answer
    assert raw.headers["x-kubetune-safety"].startswith("flagged")
    assert "weapons" in raw.headers["x-kubetune-safety"]
    assert metric_value(url, "kubetune_gateway_safety_flags_total", model="base", category="weapons") == 1
    gateway.close_logs()
    (record,) = read_log(tmp_path / "logs")
    assert record["safety"]["flagged"] is True and record["safety"]["categories"]["weapons"] > 0.5


def test_log_action_records_without_header(loop_thread, tmp_path, scripted):
    scripted.text = HARMFUL
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url, safety_action="log")
    raw = client.completions.with_raw_response.create(model="base", prompt="go")
    assert "x-kubetune-safety" not in raw.headers
    assert raw.parse().choices[0].text == HARMFUL
    gateway.close_logs()
    assert read_log(tmp_path / "logs")[0]["safety"]["flagged"] is True


def test_block_replaces_unary_and_streamed_answers(loop_thread, tmp_path, scripted):
    scripted.text = HARMFUL
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url, safety_action="block")
    answer = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content == REFUSAL_TEXT
    assert answer.choices[0].finish_reason == "content_filter"

    chunks = list(client.chat.completions.create(model="base", messages=[{"role": "user", "content": "x"}],
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REFUSAL_TEXT  # nothing of the harmful text reached the client
    assert chunks[-1].choices[0].finish_reason == "content_filter"

    scripted.text = "A harmless and helpful answer."
    streamed = client.completions.create(model="base", prompt="x", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "A harmless and helpful answer."


def test_stream_passes_events_through_and_counts_usage(loop_thread, tmp_path, scripted):
    scripted.text = "one two three four five"
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url)
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "count"}], stream=True)
    rid = raw.headers["x-request-id"]
    chunks = list(raw.parse())
    # One client event per upstream event, ids rewritten to the gateway's request id, and no
    # usage chunk the client did not ask for.
    assert [c.choices[0].delta.content for c in chunks] == ["one ", "two ", "three ", "four ", "five"]
    assert {c.id for c in chunks} == {rid}
    with_usage = list(client.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "count"}], stream=True,
        stream_options={"include_usage": True}))
    assert with_usage[-1].usage.completion_tokens == 5
    gateway.close_logs()
    # Records are written as their safety scores arrive (batched), not in request order.
    records = {r["id"]: r for r in read_log(tmp_path / "logs")}
    assert len(records) == 2
    first = records[rid]
    assert first["adapter"] == "support" and first["model"] == "base"
    assert first["response"] == "one two three four five" and first["completionTokens"] == 5
    assert metric_value(url, "kubetune_gateway_tokens_total", model="base", direction="out") == 10


def test_a_finished_stream_is_known_before_the_client_sees_its_end(loop_thread, tmp_path, scripted):
    """The engine keeps its connection open after `[DONE]`. The gateway holds `[DONE]` back until it
    has accounted for the request, so feedback sent the moment the stream ends is joined (not a
    404) and a shutdown right then still writes the record (it used to be dropped)."""
    scripted.text = "done and dusted"
    scripted.linger_after_done = 0.5
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url)
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "go"}], stream=True)
    rid = raw.headers["x-request-id"]
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse()) == "done and dusted"
    answer = httpx.post(url + "/v1/feedback", headers={"Authorization": "Bearer secret-1"},
                        json={"id": rid, "rating": -1, "comment": "too terse"})
    assert answer.status_code == 200, answer.text
    assert metric_value(url, "kubetune_gateway_tokens_total", model="base", direction="out") == 3
    gateway.close_logs()
    records = {r["id"]: r for r in read_log(tmp_path / "logs")}
    assert records[rid]["response"] == "done and dusted"
    assert records[rid]["feedback"] == {"rating": -1, "comment": "too terse"}


def test_canary_split_follows_weight_and_reloads(loop_thread, tmp_path, scripted):
    scripted.echo_model = True
    routes = tmp_path / "canary.json"
    routes.write_text(json.dumps({"version": 1, "routes": [{"model": "support", "canary": "support-v2", "weight": 30}]}))
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url, canary_config=str(routes),
                                         log_dir=None)
    assert metric_value(url, "kubetune_gateway_canary_weight", adapter="support") == 30
    n = 200
    for _ in range(n):
        client.completions.create(model="support", prompt="x")
    canary = scripted.seen_models.count("support-v2")
    assert scripted.seen_models.count("support") == n - canary
    # Seeded, so this is one fixed draw; the bounds are > 4.5 standard deviations of Binomial(200, 0.3).
    assert 30 <= canary <= 90
    assert "support" in [m.id for m in client.models.list()]

    routes.write_text(json.dumps({"routes": [{"model": "support", "canary": "support-v2", "weight": 0}]}))
    scripted.seen_models.clear()
    for _ in range(20):
        client.completions.create(model="support", prompt="x")
    assert set(scripted.seen_models) == {"support"}
    assert metric_value(url, "kubetune_gateway_canary_weight", adapter="support") == 0


def test_api_keys_file_is_reread(loop_thread, tmp_path, scripted):
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url)
    client.completions.create(model="base", prompt="x")
    keys = tmp_path / "keys"
    new = tmp_path / "keys.new"
    new.write_text("secret-2\n")
    os.replace(new, keys)  # how a mounted Secret changes: a new file swapped in
    with pytest.raises(openai.AuthenticationError):
        client.completions.create(model="base", prompt="x")
    fresh = openai.OpenAI(base_url=url + "/v1", api_key="secret-2", max_retries=0)
    assert fresh.completions.create(model="base", prompt="x").choices[0].text


def test_upstream_down_timeout_and_error(loop_thread, tmp_path, scripted):
    _, url, client = start_gateway(loop_thread, tmp_path, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503
    assert err.value.body["code"] == "upstream_unavailable" and "unavailable" in err.value.body["message"]
    assert httpx.get(url + "/healthz").status_code == 200  # the gateway itself keeps serving

    (tmp_path / "slow").mkdir()
    # Wide enough that a stalled machine does not time out the calls that must succeed.
    _, url, client = start_gateway(loop_thread, tmp_path / "slow", scripted.url, upstream_timeout=1.5)
    client.models.list()
    scripted.delay = 6.0
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(model="base", prompt="x")
    assert err.value.status_code == 504 and err.value.body["code"] == "upstream_timeout"

    scripted.delay, scripted.fail_status = 0.0, 500
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(model="base", prompt="x")
    assert err.value.status_code == 502 and err.value.body["message"] == "engine exploded"
    scripted.fail_status = None
    assert client.completions.create(model="base", prompt="x").choices[0].text


def test_payload_log_rotates_by_size(tmp_path):
    logger = PayloadLogger(tmp_path, sample_rate=1.0, max_bytes=2000, backups=2)
    for i in range(40):
        logger.record({"id": f"req-{i}", "prompt": "p" * 100, "response": "mail me at a@b.example.com"})
    logger.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["payloads.jsonl", "payloads.jsonl.1", "payloads.jsonl.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2000
        for line in (tmp_path / name).read_text().splitlines():
            rec = json.loads(line)
            assert rec["response"] == "mail me at [EMAIL]"
    newest = [json.loads(x)["id"] for x in (tmp_path / "payloads.jsonl").read_text().splitlines()]
    assert newest[-1] == "req-39"  # the newest lines are in the live file; the oldest rotated away


def test_feedback_forces_unsampled_record(tmp_path):
    logger = PayloadLogger(tmp_path, sample_rate=0.0, buffer_size=3)
    for i in range(5):
        assert logger.record({"id": f"req-{i}", "prompt": "p", "response": "r"}) is False
    assert logger.feedback("req-0", -1, "evicted") is None  # older than the buffer
    assert logger.feedback("req-3", 1, "fine") is False  # positive feedback on unsampled: not written
    assert logger.feedback("req-4", -1, "wrong, call +1 415 555 0100") is True
    logger.close()
    (rec,) = [json.loads(x) for x in (tmp_path / "payloads.jsonl").read_text().splitlines()]
    assert rec["id"] == "req-4"
    assert rec["feedback"] == {"rating": -1, "comment": "wrong, call [PHONE]"}


def test_feedback_sent_before_the_safety_score_is_joined_to_the_record(tmp_path):
    """The answer reaches the client before its safety score (scores are batched); feedback sent in
    between must neither be refused as unknown nor lost."""
    logger = PayloadLogger(tmp_path, sample_rate=0.0)
    logger.expect("req-early")
    logger.expect("req-fine")
    assert logger.feedback("req-early", -1, "wrong") is True  # will be written once scored
    assert logger.feedback("req-fine", 1, None) is False  # unsampled, positive: not written
    assert logger.feedback("req-never", -1, "x") is None
    assert logger.record({"id": "req-early", "prompt": "p", "response": "r", "safety": {"flagged": False}}) is True
    assert logger.record({"id": "req-fine", "prompt": "p", "response": "r", "safety": None}) is False
    logger.close()
    (rec,) = [json.loads(x) for x in (tmp_path / "payloads.jsonl").read_text().splitlines()]
    assert rec["id"] == "req-early" and rec["feedback"] == {"rating": -1, "comment": "wrong"}
    assert rec["safety"] == {"flagged": False}


@pytest.mark.slow
def test_sigterm_flushes_every_record(tmp_path, scripted):
    """The gateway as the operator starts it (`serve --upstream ...`, its flag spellings), stopped
    with SIGTERM as Kubernetes stops a pod: every answered request is on disk afterwards."""
    (tmp_path / "keys").write_text("k\n")
    proc = ServeProcess(["--upstream", scripted.url, "--port", "0", "--log-dir", str(tmp_path / "logs"),
                         "--sample-rate", "1.0", "--safety", "offline", "--safety-action", "flag",
                         "--api-keys-file", str(tmp_path / "keys"), "--max-tokens", "64"], cwd=tmp_path)
    try:
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="k", max_retries=0, timeout=20)
        ids = [client.completions.with_raw_response.create(model="base", prompt=f"n{i}").headers["x-request-id"]
               for i in range(40)]
    finally:
        code = proc.terminate()
    assert code == 0
    assert [r["id"] for r in read_log(tmp_path / "logs")] == ids


def test_llamaguard_scorer_option(loop_thread, tmp_path, scripted):
    """`--safety-scorer llamaGuard`: verdicts come from an OpenAI-compatible guard endpoint (here a
    scripted one answering as Llama Guard does), called off the event loop."""
    guard = ScriptedUpstream(models=[("llama-guard", None)])
    guard.text = "unsafe\nS9"
    guard_url = loop_thread.serve(guard.app())
    scripted.text = "Mix these two chemicals."
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url, safety_scorer="llamaGuard",
                                         safety_endpoint=guard_url, safety_action="flag")
    raw = client.chat.completions.with_raw_response.create(model="base", messages=[{"role": "user", "content": "?"}])
    assert raw.headers["x-kubetune-safety"] == "flagged; categories=indiscriminate_weapons"
    assert guard.seen_models == ["llama-guard"]
    guard.text = "safe"
    raw = client.chat.completions.with_raw_response.create(model="base", messages=[{"role": "user", "content": "?"}])
    assert "x-kubetune-safety" not in raw.headers


def test_chunked_body_over_the_limit_is_an_openai_413_with_request_id(loop_thread, tmp_path, scripted):
    """A body sent without Content-Length (chunked) is cut off at the limit all the same, and the
    answer is ours: OpenAI-shaped, with the request id, counted in the metrics."""
    _, url, client = start_gateway(loop_thread, tmp_path, scripted.url, max_request_bytes=2000)

    def chunks():
        yield b'{"model": "base", "prompt": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    big = httpx.post(url + "/v1/completions", content=chunks(),
                     headers={"Authorization": "Bearer secret-1", "Content-Type": "application/json"})
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "request_too_large" and "2000" in big.json()["error"]["message"]
    assert big.headers["x-request-id"].startswith("req-")
    assert metric_value(url, "kubetune_gateway_requests_total", status="413") == 1
    assert client.completions.create(model="base", prompt="still serving").choices[0].text


class _BrokenScorer:
    name = "broken"

    def score(self, prompt, response):
        raise RuntimeError("guard model unavailable")


def test_unscored_answers_are_logged_as_unknown_not_as_safe(loop_thread, tmp_path, scripted):
    """With no scorer, or a scorer that fails, the record says `safety: null`: monitoring must not
    count an unscored answer as a safe one (it would feed it to retraining)."""
    (tmp_path / "none").mkdir()
    (tmp_path / "broken").mkdir()
    gateway, url, client = start_gateway(loop_thread, tmp_path / "none", scripted.url, safety_scorer="none")
    scripted.text = HARMFUL
    client.completions.create(model="base", prompt="x")
    gateway.close_logs()
    assert [r["safety"] for r in read_log(tmp_path / "none" / "logs")] == [None]

    gateway, url, client = start_gateway(loop_thread, tmp_path / "broken", scripted.url, safety_action="log")
    gateway.safety.close()
    gateway.safety = SafetyBatcher(_BrokenScorer())
    stream = client.chat.completions.create(model="base", stream=True, messages=[{"role": "user", "content": "x"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == HARMFUL
    assert client.completions.create(model="base", prompt="still serving").choices[0].text == HARMFUL
    gateway.close_logs()
    assert [r["safety"] for r in read_log(tmp_path / "broken" / "logs")] == [None, None]
