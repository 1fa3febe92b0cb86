"""`kubetune prepare` through the real command-line entry point."""

from __future__ import annotations

import json

import yaml

from kubetune.cli import main

from .helpers import write_jsonl


def write_job(tmp_path, model_uri: str, **preprocessing) -> str:
    write_jsonl(tmp_path / "train.jsonl", [
        {"instruction": "Capital of France?", "output": "Paris"},
        {"instruction": "Capital of Italy?", "output": "Rome"},
    ])
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo"},
        "spec": {
            "baseModel": {"uri": model_uri},
            "datasets": [{"name": "capitals", "uri": "train.jsonl", "format": "alpaca"}],
            "preprocessing": {"validationSplit": 0, **preprocessing},
            "output": {"uri": str(tmp_path / "out")},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_debug_shows_tokens_next_to_labels(tmp_path, tiny_model_dir, capsys):
    job = write_job(tmp_path, str(tiny_model_dir))
    code = main(["prepare", "-f", job, "--debug", "1", "--output", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 0
    assert "2 rows in from 1 source(s); 2 train, 0 validation" in out
    table = out[out.index("sample 1 of 2"):].splitlines()
    assert "token" in table[1] and "label" in table[1]
    rows = [line.split() for line in table[2:] if line.strip()]
    # prompt tokens are masked (·); the answer's tokens are shown as their own labels
    assert rows[0][1:] == ['"<|im_start|>"', "·"]
    trained = [r for r in rows if r[-1] != "·"]
    assert trained and all(r[1] == r[2] for r in trained)
    assert trained[-1][1] == '"<|im_end|>"'
    report = json.loads((tmp_path / "report" / "dataset_report.json").read_text())
    assert report["train"] == 2 and report["digest"].startswith("sha256:")
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.endswith(".tmp")]


def test_model_override_and_missing_model(tmp_path, tiny_model_dir, capsys):
    job = write_job(tmp_path, "/nonexistent/model")
    assert main(["prepare", "-f", job]) == 1
    err = capsys.readouterr().err
    assert "no model folder at /nonexistent/model" in err and "--model DIR" in err
    assert main(["prepare", "-f", job, "--model", str(tiny_model_dir)]) == 0


def test_data_error_exits_1_with_message(tmp_path, tiny_model_dir, capsys):
    job = write_job(tmp_path, str(tiny_model_dir), maxSeqLength=16)
    assert main(["prepare", "-f", job]) == 1
    assert "no rows left" in capsys.readouterr().err


def test_invalid_manifest_names_the_field(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\nspec: {datasets: []}\n")
    assert main(["prepare", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert "invalid FineTuneJob" in err and "spec.baseModel" in err
