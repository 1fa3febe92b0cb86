"""The dataset report counts every drop, duplicate and redaction exactly, on a crafted file."""

from __future__ import annotations

import json

import pytest

from kubetune.trainer.data_prepare import DataError, prepare, summarise

from .helpers import make_spec, write_jsonl

LONG = " ".join(f"w{i}" for i in range(40))


def crafted_rows() -> list:
    rows: list = [
        {"instruction": f"Question {i}: name a colour", "output": f"Answer {i}: blue", "label": "pos" if i < 7 else "neg"}
        for i in range(10)
    ]  # lines 1-10: 7 pos, 3 neg
    rows += [
        {"instruction": "question 0:  NAME a colour", "output": "answer 0:   BLUE", "label": "pos"},  # 11 exact dup (case, spaces)
        dict(rows[1]),  # 12 exact dup
        {"instruction": "Summarise the list", "output": LONG, "label": "neg"},  # 13
        {"instruction": "Summarise the list", "output": LONG[:-2] + "zz", "label": "neg"},  # 14 near dup
        {"instruction": "Who wrote?", "output": "Write to jane.doe@example.com", "label": "pos"},  # 15 email
        {"instruction": "Who called?", "output": "Call +1 415-555-0132 today", "label": "pos"},  # 16 phone
        {"instruction": "Which card?", "output": "Card 4111 1111 1111 1111 ok", "label": "pos"},  # 17 card
        {"instruction": "Which host?", "output": "Server 192.168.1.20 is down", "label": "pos"},  # 18 ip
        {"instruction": "Which key?", "output": "Key AKIAABCDEFGHIJKLMNOP leaked", "label": "pos"},  # 19 key
        {"instruction": "Say nothing", "output": "   \t ", "label": "pos"},  # 20 empty
        {"instruction": "No answer column", "label": "pos"},  # 21 missing column
        '{"instruction": "broken',  # 22 invalid JSON
        {"instruction": "Ramble", "output": "x y " * 1500, "label": "pos"},  # 23 too long
        "[1, 2]",  # 24 not an object
    ]
    return rows


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, tokenizer):
    path = write_jsonl(tmp_path_factory.mktemp("crafted") / "train.jsonl", crafted_rows())
    spec = make_spec(
        [{"name": "crafted", "uri": str(path), "format": "alpaca", "columns": {"label": "label"}}],
        dedup="near", maxBadRowsFraction=0.2, maxSeqLength=1024,
    )
    logged: list[str] = []
    return path, prepare(spec, tokenizer, log=logged.append), logged


def test_counts_by_reason(crafted):
    _, data, _ = crafted
    report = data.report
    assert report["rowsIn"] == 24
    assert report["dropped"] == {
        "badRow": 3, "empty": 1, "duplicateExact": 2, "duplicateNear": 1,
        "templateError": 0, "tooLong": 1, "undersampled": 0,
    }
    assert report["duplicates"] == {"exact": 2, "near": 1, "mode": "near"}
    assert report["train"] == len(data.train) == 16
    assert report["validation"] == 0


def test_bad_rows_name_file_and_line(crafted):
    path, data, logged = crafted
    examples = data.report["badRowExamples"]
    assert any(e.startswith(f"{path}:21: missing column 'output'") for e in examples), examples
    assert any(e.startswith(f"{path}:22: invalid JSON") for e in examples), examples
    assert any(e.startswith(f"{path}:24: expected a JSON object") for e in examples), examples
    assert sum(line.startswith("skipped ") for line in logged) == 3


def test_redactions_by_kind(crafted):
    _, data, _ = crafted
    red = data.report["redactions"]
    assert red["byKind"] == {"card": 1, "email": 1, "ip": 1, "key": 1, "phone": 1}
    assert red["rows"] == 5 and red["total"] == 5
    responses = " ".join(r["response"] for r in data.reference)
    for placeholder in ("[EMAIL]", "[PHONE]", "[CARD]", "[IP]", "[KEY]"):
        assert placeholder in responses
    assert "jane.doe@example.com" not in responses and "4111" not in responses


def test_class_balance_and_token_stats(crafted):
    _, data, _ = crafted
    assert data.report["classBalance"]["before"] == {"neg": 4, "pos": 12}
    tokens = data.report["tokens"]["train"]
    lengths = sorted(len(s.input_ids) for s in data.train)
    assert tokens["max"] == lengths[-1] and tokens["samples"] == 16
    assert tokens["p50"] == lengths[7]  # nearest rank: ceil(0.5 * 16) = 8th value
    assert tokens["tokens"] == sum(lengths)
    assert tokens["lossTokens"] == sum(sum(lab != -100 for lab in s.labels[1:]) for s in data.train)
    assert 0 < data.report["packing"]["efficiency"] <= 1


def test_report_is_json_and_summarised(crafted):
    _, data, _ = crafted
    assert json.loads(json.dumps(data.report)) == data.report
    text = summarise(data.report)
    assert "24 rows in" in text and "16 train" in text
    assert "duplicateNear 1" in text and "email 1" in text


def test_too_many_bad_rows_fail_with_counts(tmp_path, tokenizer):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(19)] + ["not json at all"]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = make_spec([{"name": "d", "uri": str(path), "format": "alpaca"}])
    with pytest.raises(DataError) as err:
        prepare(spec, tokenizer, log=lambda _: None)
    message = str(err.value)
    assert "1 of 20 rows are malformed" in message
    assert "maxBadRowsFraction=0.01" in message
    assert f"{path}:20: invalid JSON" in message


def test_bad_rows_under_threshold_are_skipped(tmp_path, tokenizer):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(19)] + ["not json at all"]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = make_spec([{"name": "d", "uri": str(path), "format": "alpaca"}], maxBadRowsFraction=0.05)
    data = prepare(spec, tokenizer, log=lambda _: None)
    assert data.report["dropped"]["badRow"] == 1 and len(data.train) == 19


def test_same_seed_same_digest_other_seed_other_order(tmp_path, tokenizer):
    rows = [{"instruction": f"q{i}", "output": f"a{i}", "label": "ab"[i % 2]} for i in range(30)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = [{"name": "d", "uri": str(path), "format": "alpaca", "columns": {"label": "label"}}]
    quiet = dict(log=lambda _: None)
    first = prepare(make_spec(ds, validationSplit=0.2), tokenizer, **quiet)
    again = prepare(make_spec(ds, validationSplit=0.2), tokenizer, **quiet)
    other = prepare(make_spec(ds, validationSplit=0.2, seed=7), tokenizer, **quiet)
    assert first.digest == again.digest and first.digest.startswith("sha256:")
    assert [s.input_ids for s in first.train] == [s.input_ids for s in again.train]
    assert other.digest != first.digest
