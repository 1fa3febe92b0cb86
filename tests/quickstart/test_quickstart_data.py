"""The quickstart's generated task: deterministic, disjoint splits, and answerable from the prompt."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from kubetune.quickstart_data import FIELDS, INSTRUCTION, describe, make_product, read_jsonl, write_dataset


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_dataset(tmp_path / "a", seed=3, train_rows=50, eval_rows=5, traffic_rows=5, shifted_rows=5)
    b = write_dataset(tmp_path / "b", seed=3, train_rows=50, eval_rows=5, traffic_rows=5, shifted_rows=5)
    c = write_dataset(tmp_path / "c", seed=4, train_rows=50, eval_rows=5, traffic_rows=5, shifted_rows=5)
    for name in ("train", "eval", "traffic", "shifted"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes()
    assert a.train.read_bytes() != c.train.read_bytes()


def test_splits_have_the_requested_sizes_and_no_shared_products(tmp_path):
    files = write_dataset(tmp_path, train_rows=120, eval_rows=12, traffic_rows=20, shifted_rows=15)
    train = read_jsonl(files.train)
    held_out = read_jsonl(files.eval)
    traffic = read_jsonl(files.traffic)
    assert (len(train), len(held_out), len(traffic), len(read_jsonl(files.shifted))) == (120, 12, 20, 15)
    skus = lambda rows: {json.loads(r)["sku"] for r in rows}  # noqa: E731
    train_skus = skus(r["messages"][1]["content"] for r in train)
    assert len(train_skus) == 120
    assert not train_skus & skus(r["reference"] for r in held_out)
    assert not train_skus & skus(r["reference"] for r in traffic)
    assert not skus(r["reference"] for r in held_out) & skus(r["reference"] for r in traffic)


def test_training_rows_are_chat_examples_with_the_fixed_shape(tmp_path):
    files = write_dataset(tmp_path, train_rows=60, eval_rows=2, traffic_rows=2, shifted_rows=2)
    for row in read_jsonl(files.train):
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].startswith(INSTRUCTION)
        record = json.loads(assistant["content"])
        assert list(record) == list(FIELDS)


def test_every_answer_is_derivable_from_its_prompt():
    """Learnable in principle: each field of the record is stated in the prompt it answers."""
    rng = random.Random(11)
    taken: set[str] = set()
    seen_templates = set()
    for _ in range(500):
        product = make_product(rng, taken)
        text = describe(product, rng)
        seen_templates.add(text[:8])
        record = product.record()
        assert record["sku"] in text and record["name"] in text and record["category"] in text
        assert f"{record['price']:.2f}" in text and record["currency"] in text
        if record["stock"] == 0:
            assert "0 units" in text or "no units" in text
            assert record["in_stock"] is False
        else:
            assert f"{record['stock']} unit" in text and record["in_stock"] is True
    assert len(seen_templates) >= 5, "several phrasings, so the model must read rather than copy positions"


def test_sold_out_products_occur():
    rng = random.Random(1)
    products = [make_product(rng, set()) for _ in range(200)]
    assert 0.1 < sum(p.stock == 0 for p in products) / 200 < 0.35


def test_shifted_prompts_are_another_topic(tmp_path):
    files = write_dataset(tmp_path, train_rows=5, eval_rows=1, traffic_rows=1, shifted_rows=30)
    for row in read_jsonl(files.shifted):
        assert INSTRUCTION not in row["prompt"] and "reference" not in row


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least one row"):
        write_dataset(tmp_path, train_rows=0)


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2: invalid JSON"):
        read_jsonl(path)


def test_make_dataset_script(repo_root, tmp_path):
    result = subprocess.run(
        [sys.executable, str(repo_root / "examples" / "quickstart" / "make_dataset.py"), "--out", str(tmp_path),
         "--train", "10", "--eval", "2", "--traffic", "3", "--shifted", "4", "--seed", "5"],
        capture_output=True, text=True, check=True,
    )
    assert "train.jsonl" in result.stdout
    assert len(read_jsonl(tmp_path / "train.jsonl")) == 10
    expected = write_dataset(tmp_path / "again", seed=5, train_rows=10, eval_rows=2, traffic_rows=3, shifted_rows=4)
    assert (tmp_path / "train.jsonl").read_bytes() == expected.train.read_bytes()
    bad = subprocess.run([sys.executable, str(repo_root / "examples" / "quickstart" / "make_dataset.py"),
                          "--out", str(tmp_path), "--train", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "at least one row" in bad.stderr
