"""Class imbalance strategies and the stratified split."""

from __future__ import annotations

from collections import Counter

import pytest

from kubetune.trainer.data_collate import collate_sft
from kubetune.trainer.data_prepare import DataError, prepare

from .helpers import make_spec, write_jsonl

QUIET = dict(log=lambda _: None)


@pytest.fixture
def skewed(tmp_path):
    rows = [{"instruction": f"good {i}", "output": "G", "tag": "a"} for i in range(12)]
    rows += [{"instruction": f"bad {i}", "output": "B", "tag": "b"} for i in range(4)]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def answers(tokenizer, data) -> Counter:
    return Counter(tokenizer.decode([t for t in s.labels if t != -100]) for s in data.train)


def run(path, tokenizer, strategy):
    spec = make_spec(
        [{"name": "d", "uri": str(path), "format": "alpaca"}],
        imbalance={"labelField": "tag", "strategy": strategy},
    )
    return prepare(spec, tokenizer, **QUIET)


def test_oversample_brings_minority_up(skewed, tokenizer):
    data = run(skewed, tokenizer, "oversample")
    cb = data.report["classBalance"]
    assert cb["before"] == {"a": 12, "b": 4} and cb["after"] == {"a": 12, "b": 12}
    assert answers(tokenizer, data) == {"G<|im_end|>": 12, "B<|im_end|>": 12}
    # every minority row appears exactly three times
    minority = [s for s in data.train if tokenizer.decode([t for t in s.labels if t != -100]) == "B<|im_end|>"]
    assert set(Counter(tuple(s.input_ids) for s in minority).values()) == {3}


def test_undersample_brings_majority_down(skewed, tokenizer):
    data = run(skewed, tokenizer, "undersample")
    assert data.report["classBalance"]["after"] == {"a": 4, "b": 4}
    assert data.report["dropped"]["undersampled"] == 8
    assert answers(tokenizer, data) == {"G<|im_end|>": 4, "B<|im_end|>": 4}
    assert len({tuple(s.input_ids) for s in data.train}) == 8


def test_class_weights_are_inverse_frequency_with_mean_one(skewed, tokenizer):
    data = run(skewed, tokenizer, "classWeights")
    cb = data.report["classBalance"]
    assert cb["after"] == {"a": 12, "b": 4}
    assert cb["weights"] == {"a": pytest.approx(16 / 24), "b": pytest.approx(2.0)}
    by_answer = {tokenizer.decode([t for t in s.labels if t != -100]): s.weight for s in data.train}
    assert by_answer == {"G<|im_end|>": pytest.approx(2 / 3), "B<|im_end|>": pytest.approx(2.0)}
    assert sum(s.weight for s in data.train) / len(data.train) == pytest.approx(1.0)
    batch = collate_sft(data.train, pad_id=tokenizer.pad_token_id, packing=False)
    has_loss = batch["labels"] != -100
    assert (batch["loss_weights"][~has_loss] == 0).all()
    assert sorted({round(w, 4) for w in batch["loss_weights"][has_loss].tolist()}) == [0.6667, 2.0]


def test_missing_label_field_is_an_error(skewed, tokenizer):
    spec = make_spec(
        [{"name": "d", "uri": str(skewed), "format": "alpaca"}],
        imbalance={"labelField": "nosuch", "strategy": "oversample"},
    )
    with pytest.raises(DataError, match="labelField 'nosuch' is missing from every row"):
        prepare(spec, tokenizer, **QUIET)


def test_stratified_split_keeps_class_ratios(tmp_path, tokenizer):
    rows = [{"instruction": f"q{i}", "output": "x", "tag": "a" if i % 5 else "b"} for i in range(100)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = make_spec(
        [{"name": "d", "uri": str(path), "format": "alpaca", "columns": {"label": "tag"}}],
        validationSplit=0.25,
    )
    data = prepare(spec, tokenizer, **QUIET)
    assert data.report["classBalance"]["before"] == {"a": 60, "b": 15}
    assert len(data.validation) == 25 and len(data.train) == 75
    held = Counter(r["prompt"] for r in data.eval_prompts)
    val_tags = Counter("a" if int(p[1:]) % 5 else "b" for p in held)
    assert val_tags == {"a": 20, "b": 5}
    train_prompts = {r["prompt"] for r in data.reference}
    assert not train_prompts & {f"user: {p}" for p in held}  # no row in both splits
