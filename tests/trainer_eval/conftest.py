"""Fixtures for evaluation and export tests: a tiny model with a LoRA adapter that changes it.

The data preparation result is a plain namespace with the fields export reads (`digest`,
`report`, `reference`): the real `PreparedData` is another engineer's module and these tests
check export, not preparation.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from .helpers import PAIRS, load_base, sft_samples


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def lora_model(tiny_model_dir):
    """A LoRA model whose adapter is not the identity (B is random, not zero as at init)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(
        load_base(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.eval()
    return model


@pytest.fixture(scope="session")
def validation(tokenizer):
    return sft_samples(tokenizer, PAIRS)


@pytest.fixture
def prepared():
    return SimpleNamespace(
        digest="sha256:" + "ab" * 32,
        report={  # the shape of kubetune.trainer.data_report
            "rowsIn": 7,
            "sources": [{"name": "demo", "format": "alpaca", "rowsRead": 7, "rowsUsed": 6, "badRows": 1}],
            "dropped": {"empty": 1, "badRow": 1, "tooLong": 0},
            "duplicates": {"exact": 1, "near": 0, "mode": "exact"},
            "redactions": {"byKind": {"email": 2}, "rows": 1, "total": 2, "enabled": True},
            "split": {"train": 4, "validation": 1, "validationSplit": 0.1},
        },
        reference=[{"prompt": p, "response": r} for p, r in PAIRS],
    )
