"""Fixtures for the training engine tests: tiny samples tokenised with the tiny model's template."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

QA = [
    ("hi", "hello there", "go away"),
    ("2+2?", "4", "5"),
    ("capital of France?", "Paris", "Rome"),
    ("color of the sky?", "blue", "green"),
    ("opposite of up?", "down", "sideways"),
    ("first letter?", "a", "z"),
    ("Ray trains models?", "yes", "no"),
    ("vLLM serves them?", "yes", "maybe"),
]


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


def _prompt_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text)["input_ids"]


@pytest.fixture(scope="session")
def sft_samples(tokenizer):
    """Eight chat samples with loss on the answer tokens only."""
    from kubetune.trainer.data_prepare import SftSample

    samples = []
    for question, answer, _ in QA:
        prompt = _prompt_ids(tokenizer, question)
        response = tokenizer(answer + "<|im_end|>\n")["input_ids"]
        samples.append(SftSample(prompt + response, [-100] * len(prompt) + response))
    return samples


@pytest.fixture(scope="session")
def preference_samples(tokenizer):
    from kubetune.trainer.data_prepare import PreferenceSample

    return [
        PreferenceSample(_prompt_ids(tokenizer, q), tokenizer(c + "<|im_end|>")["input_ids"], tokenizer(r + "<|im_end|>")["input_ids"])
        for q, c, r in QA
    ]


BASE_SPEC = {
    "datasets": [{"name": "qa", "uri": "train.jsonl", "format": "alpaca"}],
    "method": {"type": "lora"},
    "hyperparameters": {"maxSteps": 6, "batchSize": 1, "learningRate": 0.01, "warmupRatio": 0, "seed": 7},
    "resources": {"workers": 1, "gpusPerWorker": 0},
    "evaluation": {"metrics": ["loss"], "safety": {"enabled": False}},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_job(tiny_model_dir, tmp_path):
    """A validated FineTuneJob on the tiny model; keyword dicts are merged into the spec."""
    from kubetune.api import parse_finetunejob

    def make(spec: dict | None = None, *, name: str = "tiny"):
        body = _merge(BASE_SPEC, {"baseModel": {"uri": str(tiny_model_dir)}, "output": {"uri": str(tmp_path / "out")}})
        body = _merge(body, spec or {})
        if body["method"]["type"] != "lora" and "lora" not in (spec or {}).get("method", {}):
            body["method"].pop("lora", None)
        return parse_finetunejob({
            "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "default"}, "spec": body,
        })

    return make


@pytest.fixture
def checkpoint_dir(tmp_path) -> Path:
    return tmp_path / "checkpoints"
