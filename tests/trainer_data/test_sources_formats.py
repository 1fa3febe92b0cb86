"""Every source kind and format, with column mappings, reaches the same conversations."""

from __future__ import annotations

import csv
import json

import pytest

from kubetune.trainer.data_prepare import DataError, PreferenceSample, SftSample, prepare

from .helpers import make_spec, write_jsonl

QUIET = dict(log=lambda _: None)


def trained_text(tokenizer, sample: SftSample) -> str:
    return tokenizer.decode([t for t in sample.labels if t != -100])


def full_text(tokenizer, sample: SftSample) -> str:
    return tokenizer.decode(sample.input_ids)


def run(tokenizer, path, fmt: str, columns: dict | None = None, objective: str = "sft"):
    ds = {"name": "d", "uri": str(path), "format": fmt}
    if columns:
        ds["columns"] = columns
    return prepare(make_spec([ds], objective=objective), tokenizer, **QUIET)


def test_alpaca_with_column_mapping_and_input(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"question": "Add them", "context": "2 and 3", "answer": "5", "sys": "Be brief."}])
    data = run(tokenizer, path, "alpaca", {"prompt": "question", "input": "context", "response": "answer", "system": "sys"})
    (sample,) = data.train
    text = full_text(tokenizer, sample)
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text
    assert "<|im_start|>user\nAdd them\n\n2 and 3<|im_end|>" in text
    assert trained_text(tokenizer, sample) == "5<|im_end|>"


def test_openai_messages(tmp_path, tokenizer):
    row = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    data = run(tokenizer, write_jsonl(tmp_path / "c.jsonl", [row]), "chat")
    assert trained_text(tokenizer, data.train[0]) == "Hello!<|im_end|>"
    assert data.eval_prompts == [] and data.reference[0] == {"prompt": "system: S\nuser: Hi", "response": "Hello!"}


def test_sharegpt_conversations(tmp_path, tokenizer):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    data = run(tokenizer, write_jsonl(tmp_path / "s.jsonl", [row]), "chat")
    text = full_text(tokenizer, data.train[0])
    assert text.startswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>")
    assert trained_text(tokenizer, data.train[0]) == "Yo<|im_end|>"


def test_chat_custom_column_and_content_parts(tmp_path, tokenizer):
    row = {"dialog": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Yes"}]}
    data = run(tokenizer, write_jsonl(tmp_path / "c.jsonl", [row]), "chat", {"messages": "dialog"})
    assert trained_text(tokenizer, data.train[0]) == "Yes<|im_end|>"


def test_text_format_trains_on_everything(tmp_path, tokenizer):
    data = run(tokenizer, write_jsonl(tmp_path / "t.jsonl", [{"body": "The quick brown fox."}]), "text", {"text": "body"})
    (sample,) = data.train
    assert sample.labels == sample.input_ids
    assert sample.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(sample.input_ids) == "The quick brown fox.<|im_end|>"


def test_preference_pairs(tmp_path, tokenizer):
    rows = [
        {"q": "Capital of France?", "good": "Paris", "bad": "Rome"},
        {"q": [{"role": "user", "content": "2+2?"}], "good": [{"role": "assistant", "content": "4"}], "bad": "5"},
    ]
    data = run(tokenizer, write_jsonl(tmp_path / "p.jsonl", rows), "preference",
               {"prompt": "q", "chosen": "good", "rejected": "bad"}, objective="dpo")
    assert all(isinstance(s, PreferenceSample) for s in data.train)
    by_prompt = {tokenizer.decode(s.prompt_ids): s for s in data.train}
    s = by_prompt["<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"]
    assert tokenizer.decode(s.chosen_ids) == "Paris<|im_end|>"
    assert tokenizer.decode(s.rejected_ids) == "Rome<|im_end|>"
    s = by_prompt["<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"]
    assert tokenizer.decode(s.chosen_ids) == "4<|im_end|>" and tokenizer.decode(s.rejected_ids) == "5<|im_end|>"


ROWS = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]


def _expected(tokenizer):
    return sorted(f"a{i}<|im_end|>" for i in range(3))


@pytest.mark.parametrize("kind", ["csv", "json", "parquet", "saved", "folder", "file-uri"])
def test_file_types_and_uris(kind, tmp_path, tokenizer):
    if kind == "csv":
        path = tmp_path / "d.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["instruction", "output"])
            writer.writeheader()
            writer.writerows(ROWS)
        uri = str(path)
    elif kind == "json":
        (tmp_path / "d.json").write_text(json.dumps(ROWS))
        uri = str(tmp_path / "d.json")
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
        uri = str(tmp_path / "d.parquet")
    elif kind == "saved":
        import datasets

        datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
        uri = str(tmp_path / "saved")
    elif kind == "folder":
        (tmp_path / "parts").mkdir()
        write_jsonl(tmp_path / "parts" / "a.jsonl", ROWS[:2])
        write_jsonl(tmp_path / "parts" / "b.jsonl", ROWS[2:])
        uri = str(tmp_path / "parts")
    else:
        uri = "file://" + str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    data = run(tokenizer, uri, "alpaca")
    assert sorted(trained_text(tokenizer, s) for s in data.train) == _expected(tokenizer)


def test_pvc_uri_resolves_under_the_mount(tmp_path, tokenizer, monkeypatch):
    (tmp_path / "claim" / "data").mkdir(parents=True)
    write_jsonl(tmp_path / "claim" / "data" / "d.jsonl", ROWS)
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path))
    data = run(tokenizer, "pvc://claim/data/d.jsonl", "alpaca")
    assert data.report["sources"][0]["path"] == str(tmp_path / "claim" / "data" / "d.jsonl")
    assert len(data.train) == 3


def test_relative_path_resolves_against_base_dir(tmp_path, tokenizer):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    spec = make_spec([{"name": "d", "uri": "./d.jsonl", "format": "alpaca"}])
    assert len(prepare(spec, tokenizer, base_dir=tmp_path, **QUIET).train) == 3


def test_csv_row_with_wrong_column_count_names_line(tmp_path, tokenizer):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\nq1,a1\nq2,a2,extra\n" + "".join(f"q{i},a{i}\n" for i in range(3, 40)))
    spec = make_spec([{"name": "d", "uri": str(path), "format": "alpaca"}], maxBadRowsFraction=0.05)
    data = prepare(spec, tokenizer, **QUIET)
    assert data.report["badRowExamples"] == [f"{path}:3: expected 2 columns, got 3"]


@pytest.mark.skipif(__import__("importlib").util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_s3_without_s3fs_says_what_to_install(tokenizer):
    with pytest.raises(DataError, match=r"s3://bucket/d.jsonl is on S3, which needs the `s3fs` package"):
        run(tokenizer, "s3://bucket/d.jsonl", "alpaca")


@pytest.fixture
def fake_s3(monkeypatch):
    """An in-memory filesystem registered for s3:// in fsspec. A mock: no S3 (nor s3fs, nor a
    network) is reachable here; the reading, parsing and error paths are ours and real."""
    import importlib.util

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeS3(MemoryFileSystem):
        protocol = ("s3",)
        store: dict = {}  # its own store, not the process-wide memory:// one
        pseudo_dirs = [""]

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "s3fs" else real_find_spec(name, *a))
    fsspec.register_implementation("s3", FakeS3, clobber=True)
    fs = FakeS3()
    yield fs
    FakeS3.store.clear()
    FakeS3.clear_instance_cache()
    from fsspec.registry import _registry

    _registry.pop("s3", None)  # unregister: later code gets s3fs (or its error) again


def test_s3_sources_are_read_through_fsspec(fake_s3, tokenizer):
    rows = [{"instruction": f"q{i}", "output": f"answer {i}"} for i in range(3)]
    with fake_s3.open("s3://bucket/train/d.jsonl", "wb") as fh:
        fh.write(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b"this is not json\n")
    with pytest.raises(DataError, match=r"s3://bucket/train/d\.jsonl:4"):  # bad lines name the S3 object and line
        run(tokenizer, "s3://bucket/train/d.jsonl", "alpaca")
    with fake_s3.open("s3://bucket/train/d.jsonl", "wb") as fh:
        fh.write(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    prepared = run(tokenizer, "s3://bucket/train/d.jsonl", "alpaca")
    assert sorted(trained_text(tokenizer, s) for s in prepared.train + prepared.validation) == [
        "answer 0<|im_end|>", "answer 1<|im_end|>", "answer 2<|im_end|>"]
    with pytest.raises(DataError, match=r"cannot read s3://bucket/missing\.jsonl"):
        run(tokenizer, "s3://bucket/missing.jsonl", "alpaca")
    with pytest.raises(DataError, match=r"only single .* files are read from S3"):
        run(tokenizer, "s3://bucket/train/", "alpaca")


def test_missing_file_and_unsupported_type(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"datasets\[d\]\.uri: .*not found"):
        run(tokenizer, tmp_path / "nope.jsonl", "alpaca")
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unsupported type \.txt"):
        run(tokenizer, tmp_path / "d.txt", "alpaca")


def test_unknown_role_is_a_bad_row(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    with pytest.raises(DataError, match=r"d.jsonl:1: messages\[0\]\.role 'wizard' is unknown"):
        run(tokenizer, write_jsonl(tmp_path / "d.jsonl", rows), "chat")


def test_max_samples_and_weighted_mix(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"a{i}", "output": "A"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"b{i}", "output": "B"} for i in range(20)])
    spec = make_spec([
        {"name": "a", "uri": str(a), "format": "alpaca", "weight": 3},
        {"name": "b", "uri": str(b), "format": "alpaca", "weight": 1, "maxSamples": 10},
    ])
    data = prepare(spec, tokenizer, **QUIET)
    assert data.report["sources"][1]["rowsRead"] == 20 and data.report["sources"][1]["rowsUsed"] == 10
    assert data.report["mix"]["a"] == {"rows": 10, "weight": 3.0, "mixedRows": 15, "share": 0.75}
    assert data.report["mix"]["b"]["mixedRows"] == 5
    answers = [trained_text(tokenizer, s) for s in data.train]
    assert answers.count("A<|im_end|>") == 15 and answers.count("B<|im_end|>") == 5
