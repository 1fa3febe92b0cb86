"""Helpers shared by the evaluation and export tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace


def make_job(output_dir: Path, base: Path, **spec_overrides):
    from kubetune.api import parse_finetunejob

    spec = {
        "baseModel": {"uri": str(base)},
        "datasets": [{"name": "demo", "uri": "data/train.jsonl", "format": "alpaca"}],
        "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}},
        "hyperparameters": {"batchSize": 4},
        "evaluation": {
            "metrics": ["loss", "perplexity", "exactMatch", "rougeL"],
            "maxNewTokens": 6,
            "gates": [{"metric": "evalLoss", "operator": "<=", "threshold": 100.0}],
        },
        "output": {"uri": str(output_dir)},
    }
    for key, value in spec_overrides.items():
        spec[key] = value
    return parse_finetunejob(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "demo", "namespace": "team-a"},
            "spec": spec,
        }
    )


def load_base(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def sft_samples(tokenizer, pairs):
    """SftSample-like rows: chat-templated prompt + answer, loss only on the answer."""
    rows = []
    for prompt, answer in pairs:
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append(SimpleNamespace(input_ids=head_ids + answer_ids, labels=[-100] * len(head_ids) + answer_ids))
    return rows


PAIRS = [
    ("What is the capital of France?", "Paris."),
    ("Name a container orchestrator.", "Kubernetes runs containers."),
    ("What trains models?", "Ray trains models."),
    ("Describe the fox.", "The quick brown fox jumps over the lazy dog."),
    ("What serves models?", "vLLM serves them."),
]
