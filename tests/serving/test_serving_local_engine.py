"""`kubetune serve` on the tiny model (real transformers + peft on the CPU) with the official
`openai` client: the whole request path a user has, started once per module as a subprocess.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.serving.serving_support import ServeProcess, make_adapter, read_log

pytestmark = pytest.mark.slow  # one model load in a subprocess for the module (~20 s on 2 cores)

KEY = "test-key-1"
CONTRACT_KEYS = {"id", "time", "model", "adapter", "prompt", "response", "promptTokens", "completionTokens",
                 "latencyMs", "safety", "feedback"}
GATEWAY_METRICS = ["kubetune_gateway_requests_total", "kubetune_gateway_request_duration_seconds",
                   "kubetune_gateway_ttft_seconds", "kubetune_gateway_tokens_total",
                   "kubetune_gateway_safety_flags_total", "kubetune_gateway_canary_weight"]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    adapter = make_adapter(tiny_model_dir, work / "artifact")
    second = make_adapter(tiny_model_dir, work / "artifact-2", seed=2)
    (work / "keys").write_text(f"{KEY}\nother-key\n")
    proc = ServeProcess(
        ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--adapter", f"support={adapter}",
         "--port", "0", "--api-keys", str(work / "keys"), "--log-dir", str(work / "logs"), "--sample-rate", "0",
         "--max-tokens", "32", "--max-request-bytes", "4096", "--seed", "0", "--threads", "1"],
        cwd=work,
    )
    proc.work, proc.second_adapter = work, second
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_list_names_base_and_adapter(client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny", "support"}
    assert models["support"].model_extra["parent"] == "tiny"


def test_chat_and_completion_with_usage_and_request_id(client):
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
    chat = raw.parse()
    assert chat.id == raw.headers["x-request-id"] and chat.id.startswith("req-")
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    assert chat.usage.prompt_tokens > 3 and 1 <= chat.usage.completion_tokens <= 8
    done = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=5, temperature=0)
    assert done.usage.completion_tokens <= 5 and done.choices[0].finish_reason in ("stop", "length")


def test_adapter_changes_greedy_output(client):
    ask = dict(prompt="Kubernetes runs containers;", max_tokens=12, temperature=0)
    base = client.completions.create(model="tiny", **ask).choices[0].text
    tuned = client.completions.create(model="support", **ask).choices[0].text
    again = client.completions.create(model="tiny", **ask).choices[0].text
    assert tuned != base  # the adapter is applied for its name only...
    assert again == base  # ...and switched off again for the base


def test_streaming_arrives_token_by_token(client):
    stream = client.chat.completions.create(model="support", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens >= 2
    # An event per decoded token (a byte-level token that splits a UTF-8 character waits for
    # the next one), not one blob at the end.
    assert 2 <= len(pieces) <= usage.completion_tokens
    unary = client.chat.completions.create(model="support", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=10, temperature=0)
    assert "".join(pieces) == unary.choices[0].message.content


def test_errors_are_openai_shaped_and_server_keeps_serving(served, client):
    url = served.url
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    no_key = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"

    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bad = httpx.post(url + "/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers=auth)
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert "malformed JSON" in bad.json()["error"]["message"] and "line 1" in bad.json()["error"]["message"]

    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found" and "no-such-adapter" in err.value.body["message"]

    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="x", max_tokens=33)
    assert err.value.body["param"] == "max_tokens" and "32" in err.value.body["message"]

    big = httpx.post(url + "/v1/completions", headers=auth,
                     content=json.dumps({"model": "tiny", "prompt": "x" * 5000}).encode())
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"

    missing = httpx.post(url + "/v1/chat/completions", headers=auth, json={"model": "tiny"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"

    assert client.completions.create(model="tiny", prompt="still", max_tokens=2).choices  # still serving


@pytest.fixture()
def metrics_text(served):
    return httpx.get(served.url + "/metrics").text


def test_metrics_have_the_contract_names(served, client, metrics_text):
    for name in GATEWAY_METRICS:
        assert f"# HELP {name} " in metrics_text, name
    samples = metrics_text.splitlines()

    def value(name, **labels):
        for line in samples:
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no sample {name} {labels}")

    assert value("kubetune_gateway_requests_total", model="tiny", adapter="support", status="200") >= 1
    assert value("kubetune_gateway_requests_total", model="", adapter="", status="401") >= 1
    assert value("kubetune_gateway_tokens_total", model="tiny", direction="out") >= 5
    assert value("kubetune_gateway_ttft_seconds_count", model="tiny") >= 5


def test_runtime_lora_api_matches_vllm(served, client):
    """The operator's adapter client (operator/vllm_admin.py) works against our engine too."""
    admin_mod = pytest.importorskip("kubetune.operator.vllm_admin")

    async def go():
        async with admin_mod.VllmAdmin(served.upstream) as admin:
            await admin.load_adapter("support-v2", str(served.second_adapter))
            with pytest.raises(admin_mod.EngineRequestError) as err:
                await admin.load_adapter("support-v2", str(served.second_adapter))
            assert err.value.status == 400 and "already been loaded" in err.value.message
            with pytest.raises(admin_mod.EngineRequestError) as err:
                await admin.load_adapter("broken", str(served.work))
            assert "adapter_config.json" in err.value.message
            cards = {c.id: c for c in await admin.models()}
            assert cards["support-v2"].parent == "tiny" and cards["support-v2"].root == str(served.second_adapter)
            return cards

    asyncio.run(go())
    assert "support-v2" in [m.id for m in client.models.list()]
    assert client.completions.create(model="support-v2", prompt="x", max_tokens=3).choices

    async def unload():
        async with admin_mod.VllmAdmin(served.upstream) as admin:
            await admin.unload_adapter("support-v2")
            with pytest.raises(admin_mod.EngineRequestError) as err:
                await admin.unload_adapter("support-v2")
            assert err.value.status == 404

    asyncio.run(unload())
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="support-v2", prompt="x", max_tokens=3)


def test_feedback_forces_redacted_record_into_payload_log(served, client):
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Email me at jane.doe@example.com please"}],
        max_tokens=4)
    rid = raw.headers["x-request-id"]
    auth = {"Authorization": f"Bearer {KEY}"}
    bad = httpx.post(served.url + "/v1/feedback", headers=auth, json={"id": rid, "rating": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
    unknown = httpx.post(served.url + "/v1/feedback", headers=auth, json={"id": "req-nope", "rating": -1})
    assert unknown.status_code == 404
    ok = httpx.post(served.url + "/v1/feedback", headers=auth,
                    json={"id": rid, "rating": -1, "comment": "wrong; my card is 4111 1111 1111 1111"})
    assert ok.status_code == 200 and ok.json()["logged"] is True

    served.terminate()  # SIGTERM flushes the log; the module's other tests ran before this one
    records = read_log(served.work / "logs")
    (record,) = [r for r in records if r["id"] == rid]  # sample rate 0: only the feedback forced it in
    assert set(record) == CONTRACT_KEYS
    assert record["prompt"] == "system: Be brief.\nuser: Email me at [EMAIL] please"
    assert record["feedback"] == {"rating": -1, "comment": "wrong; my card is [CARD]"}
    assert record["model"] == "tiny" and record["adapter"] == "support"
    assert record["completionTokens"] >= 1 and record["latencyMs"] > 0 and record["time"].endswith("Z")
    assert set(record["safety"]) == {"flagged", "score", "categories"}  # scored (offline scorer by default)
    assert "jane.doe" not in (served.work / "logs" / "payloads.jsonl").read_text()
