"""Per-key rate limits and back-pressure in the gateway, through real HTTP and the `openai` client.

The upstream is the scripted engine (tests/serving/serving_support.py): what is tested is the
gateway's admission, not generation. The bucket arithmetic has a fake clock; the gateway tests
use the real one with budgets far from refilling within a test.
"""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from kubetune.serving.auth import parse_key_entries
from kubetune.serving.gateway import Gateway, GatewayConfig
from kubetune.serving.rate_limit import Buckets, Limits, key_label

from tests.serving.test_serving_gateway_policies import metric_value, scripted, start_gateway  # noqa: F401


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_bucket_bursts_to_its_minute_then_refills_at_its_rate():
    clock = Clock()
    buckets = Buckets(clock=clock)
    limits = Limits(requests_per_minute=3)
    assert [buckets.take("k", limits, 1).allowed for _ in range(4)] == [True, True, True, False]
    refused = buckets.take("k", limits, 1)
    assert refused.limit == "requests" and refused.retry_after == pytest.approx(20.0)
    clock.now += 20.0  # one request's worth refilled
    assert buckets.take("k", limits, 1).allowed and not buckets.take("k", limits, 1).allowed
    assert buckets.take("other", limits, 1).allowed  # each key has its own buckets


def test_token_charges_are_settled_to_the_real_usage():
    clock = Clock()
    buckets = Buckets(clock=clock)
    limits = Limits(tokens_per_minute=1000)
    assert buckets.take("k", limits, 900).allowed
    refused = buckets.take("k", limits, 200)
    assert not refused.allowed and refused.limit == "tokens" and refused.retry_after == pytest.approx(6.0)
    buckets.settle("k", limits, charged=900, used=100)  # the answer was short: 800 back
    assert buckets.take("k", limits, 200).allowed


def test_workers_share_one_bucket_file(tmp_path):
    """Two Buckets on one file, as two gateway workers of a pod: the limit is the pod's."""
    clock = Clock()
    first, second = Buckets(tmp_path / "rl", clock=clock), Buckets(tmp_path / "rl", clock=clock)
    limits = Limits(requests_per_minute=4)
    taken = [b.take("k", limits, 1).allowed for b in (first, second, first, second, first)]
    assert taken == [True, True, True, True, False]
    first.close()
    second.close()
    assert b"k" not in (tmp_path / "rl").read_bytes()  # keys are kept hashed


def test_key_lines_take_their_own_limits_and_bad_lines_name_the_line():
    entries = parse_key_entries("# keys\nsk-a rpm=60 tpm=1000\nsk-b\n\nsk-c tpm=5e4\n")
    assert [(e.key, e.limits) for e in entries] == [
        (b"sk-a", Limits(60, 1000)), (b"sk-b", None), (b"sk-c", Limits(None, 50000))]
    with pytest.raises(ValueError) as err:
        parse_key_entries("sk-a rpm=0\nsk-b burst=3\nsk-c tpm=x\n", "keys")
    message = str(err.value)
    assert "keys: line 1: rpm='0'" in message and "line 2: 'burst=3'" in message and "line 3: tpm='x'" in message


def test_the_gateway_answers_429_at_a_keys_limit_with_retry_after(loop_thread, tmp_path, scripted):
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url)
    (tmp_path / "keys").write_text("secret-1 rpm=2\nsecret-2\n")
    gateway.default_limits = Limits(requests_per_minute=100)
    ask = lambda c: c.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}])  # noqa: E731
    ask(client)
    ask(client)
    with pytest.raises(openai.RateLimitError) as err:
        ask(client)
    assert err.value.status_code == 429
    assert int(err.value.response.headers["Retry-After"]) >= 1
    body = err.value.body
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
    assert "requests per minute: limit 2" in body["message"]
    other = openai.OpenAI(base_url=url + "/v1", api_key="secret-2", max_retries=0, timeout=20)
    for _ in range(3):
        ask(other)  # the other key has the default budget, untouched by the first key
    assert metric_value(url, "kubetune_gateway_rate_limited_total", key=key_label("secret-1"), limit="requests") == 1
    assert metric_value(url, "kubetune_gateway_key_requests_total", key=key_label("secret-2")) == 3
    assert "secret-1" not in httpx.get(url + "/metrics").text


def test_a_token_budget_counts_prompt_and_max_tokens(loop_thread, tmp_path, scripted):
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url)
    (tmp_path / "keys").write_text("secret-1 tpm=300\n")
    gateway.default_limits = Limits(requests_per_minute=3)  # the line names no rpm: the default applies
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=400)
    assert err.value.body["type"] == "tokens" and "limit 300, this request needs 40" in err.value.body["message"]
    # Each charge is 202 of 300; the scripted engine's answers use a few tokens, and the settled
    # charge is what counts, so the second and third fit too. Unsettled, the second would get 429.
    for _ in range(3):
        reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=200)
        assert reply.usage.total_tokens < 50
    with pytest.raises(openai.RateLimitError) as err:  # a 4th admitted request: over the default rpm of 3
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert err.value.body["type"] == "requests"


def test_a_full_queue_answers_503_with_retry_after_instead_of_waiting(loop_thread, tmp_path, scripted):
    """One upstream slot, no queue: while a slow request holds the slot, the next one is refused at once."""
    scripted.delay = 1.5
    gateway, url, client = start_gateway(loop_thread, tmp_path, scripted.url, max_concurrency=1, max_queue=0)
    slow = threading.Thread(target=lambda: client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "slow"}]))
    slow.start()
    try:
        for _ in range(100):
            if gateway._slots.locked():
                break
            threading.Event().wait(0.02)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="base", messages=[{"role": "user", "content": "next"}])
        assert err.value.status_code == 503 and err.value.response.headers["Retry-After"] == "1"
        assert err.value.body["code"] == "server_overloaded"
    finally:
        slow.join()
    assert metric_value(url, "kubetune_gateway_overload_rejections_total", reason="queue_full") == 1
    # The slot is free again: requests are answered.
    scripted.delay = 0.0
    assert client.chat.completions.create(model="base", messages=[{"role": "user", "content": "ok"}]).choices


def test_bad_limits_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--rate-limit-rpm: must be positive") as err:
        Gateway(GatewayConfig(rate_limit_rpm=0, max_queue=-1))
    assert "--max-queue: must not be negative" in str(err.value)
