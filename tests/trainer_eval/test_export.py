"""Export: the artifact reloads with peft/transformers and computes what the in-memory model did."""

from __future__ import annotations

import json

import pytest

from kubetune.trainer import export as export_module
from kubetune.trainer.export import ExportError, _current_umask, export_artifact
from kubetune.trainer.manifest import dir_digest, weights_digest

from .helpers import PAIRS, load_base, make_job

EVALUATION = {
    "metrics": {"evalLoss": 1.25, "baseEvalLoss": 2.5, "evalLossDelta": -1.25, "perplexity": 3.49, "rougeL": 0.5},
    "samples": [{"prompt": "What is the capital of France?", "reference": "Paris.", "base": "x", "tuned": "Paris"}],
    "gates": [{"metric": "evalLoss", "operator": "<=", "threshold": 2.0, "value": 1.25, "passed": True}],
    "passed": True,
}
MANIFEST_KEYS = {
    "kubetune", "job", "baseModel", "artifact", "datasetDigest", "config", "metrics", "gates", "gatesPassed",
    "chatTemplate", "versions", "reference", "createdTime",
}


def _ids(tokenizer):
    import torch

    return torch.tensor([tokenizer("Kubernetes runs containers; Ray trains models.")["input_ids"]])


def _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared, **spec):
    job = make_job(tmp_path / "out", tiny_model_dir, **spec)
    status = export_artifact(
        model=lora_model, tokenizer=tokenizer, job=job, output_dir=tmp_path / "out", evaluation=EVALUATION,
        prepared=prepared, base_model_dir=tiny_model_dir, log=lambda _: None,
    )
    return job, status


def test_adapter_reloads_with_peft_and_gives_the_same_logits(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared):
    import torch
    from peft import PeftModel

    ids = _ids(tokenizer)
    with torch.no_grad():
        expected = lora_model(input_ids=ids).logits
    _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared)
    adapter = tmp_path / "out" / "adapter"
    reloaded = PeftModel.from_pretrained(load_base(tiny_model_dir), adapter).eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected)
    with torch.no_grad(), reloaded.disable_adapter():
        assert not torch.allclose(reloaded(input_ids=ids).logits, expected)  # the adapter matters
    # ... and generates what the trained model generates (greedy, so the tokens must match).
    greedy = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        want = lora_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **greedy)
        generated = reloaded.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **greedy)
    assert generated.shape[1] > ids.shape[1]
    assert generated.tolist() == want.tolist()


def test_adapter_is_what_vllm_loads(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared)
    adapter = tmp_path / "out" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    reloaded_tok = AutoTokenizer.from_pretrained(adapter)
    assert reloaded_tok.chat_template == tokenizer.chat_template
    # Staging folders are private (0700); the published artifact follows the umask, so the
    # serving pods' user can read it.
    umask = _current_umask()
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (adapter / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_merged_export_equals_adapter_logits_and_keeps_the_adapter(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared):
    import torch
    from transformers import AutoModelForCausalLM

    ids = _ids(tokenizer)
    with torch.no_grad():
        expected = lora_model(input_ids=ids).logits
    _, status = _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared,
                        output={"uri": str(tmp_path / "out"), "mergeAdapter": True})
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
        # The in-memory model was unmerged afterwards: the adapter still toggles.
        torch.testing.assert_close(lora_model(input_ids=ids).logits, expected)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["artifact"]["kind"] == "adapter"
    assert manifest["artifact"]["merged"]["digest"] == dir_digest(tmp_path / "out" / "merged")
    assert status["artifact"]["kind"] == "adapter"


def test_manifest_has_every_contract_field_and_stable_digests(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared):
    job, status = _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared)
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["job"] == {"name": "demo", "namespace": "team-a"}
    assert manifest["baseModel"] == {"uri": str(tiny_model_dir), "revision": None, "digest": weights_digest(tiny_model_dir)}
    assert manifest["artifact"]["digest"] == dir_digest(out / "adapter")
    assert manifest["artifact"]["loraRank"] == 4
    assert manifest["artifact"]["targetModules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert manifest["datasetDigest"] == prepared.digest
    assert manifest["config"] == job.spec.to_wire()
    assert manifest["metrics"] == EVALUATION["metrics"] and manifest["gatesPassed"] is True
    assert manifest["chatTemplate"] == tokenizer.chat_template
    assert manifest["versions"]["torch"] and manifest["versions"]["peft"]
    assert manifest["reference"] == {"file": "reference.jsonl", "rows": len(PAIRS)}
    rows = [json.loads(line) for line in (out / "reference.jsonl").read_text().splitlines()]
    assert rows[0] == {"prompt": PAIRS[0][0], "response": PAIRS[0][1]}
    assert json.loads((out / "evaluation.json").read_text())["metrics"] == EVALUATION["metrics"]
    assert json.loads((out / "dataset_report.json").read_text()) == prepared.report
    assert status == {
        "artifact": {"uri": str(out), "digest": manifest["artifact"]["digest"], "kind": "adapter"},
        "evaluation": {"metrics": EVALUATION["metrics"], "gates": EVALUATION["gates"], "passed": True,
                       "reportUri": f"{out}/evaluation.json"},
    }
    # Same model, same files: a second export gives the same artifact digest.
    first = manifest["artifact"]["digest"]
    _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared)
    assert json.loads((out / "manifest.json").read_text())["artifact"]["digest"] == first


def test_model_card_renders_metrics_and_gates(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared):
    _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared)
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("# demo")
    assert "| Validation loss (lower is better) | 2.5 | 1.25 |" in card
    assert "| evalLoss <= 2 | 1.25 | passed |" in card
    assert "All gates passed" in card
    assert "## Intended use" in card and "## Limitations" in card
    assert "- Source `demo` (alpaca): 6 of 7 rows used, 1 malformed" in card
    assert "- Duplicates removed: 1 exact, 0 near" in card
    assert "- Dropped by reason: badRow 1, empty 1" in card
    assert "- PII redactions: email 2" in card


def test_failure_mid_export_keeps_the_previous_artifact_and_checkpoints(
    lora_model, tokenizer, tmp_path, tiny_model_dir, prepared, monkeypatch
):
    out = tmp_path / "out"
    _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared)
    (out / "checkpoints" / "step-10").mkdir(parents=True)
    (out / "checkpoints" / "step-10" / "state.pt").write_bytes(b"weights")
    (out / "progress.jsonl").write_text('{"event": "progress"}\n')
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "render_model_card", broken)
    with pytest.raises(OSError, match="disk full"):
        _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind

    # A successful re-export replaces the artifact and carries checkpoints and progress over.
    monkeypatch.undo()
    _export(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared,
            output={"uri": str(out), "mergeAdapter": True})
    assert (out / "checkpoints" / "step-10" / "state.pt").read_bytes() == b"weights"
    assert (out / "progress.jsonl").read_text() == '{"event": "progress"}\n'
    assert (out / "merged").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_rank_above_the_deployment_limit_is_refused_before_writing(lora_model, tokenizer, tmp_path, tiny_model_dir, prepared):
    job = make_job(tmp_path / "out", tiny_model_dir)
    with pytest.raises(ExportError, match="rank 4 is above .* max LoRA rank 2"):
        export_artifact(model=lora_model, tokenizer=tokenizer, job=job, output_dir=tmp_path / "out",
                        evaluation=EVALUATION, prepared=prepared, base_model_dir=tiny_model_dir,
                        max_lora_rank=2, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_full_method_exports_weights_that_reload(tokenizer, tmp_path, tiny_model_dir, prepared):
    import torch
    from transformers import AutoModelForCausalLM

    model = load_base(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    ids = _ids(tokenizer)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    job = make_job(tmp_path / "out", tiny_model_dir, method={"type": "full"})
    status = export_artifact(model=model, tokenizer=tokenizer, job=job, output_dir=tmp_path / "out",
                             evaluation=EVALUATION, prepared=prepared, base_model_dir=tiny_model_dir, log=lambda _: None)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected)
    assert status["artifact"]["kind"] == "full"
    assert not (tmp_path / "out" / "adapter").exists()


def _grown_vocabulary_model(tiny_model_dir, tokenizer):
    """A LoRA model whose tokenizer gained two tokens; the resized embedding and LM head train whole."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    grown = copy.deepcopy(tokenizer)
    grown.add_special_tokens({"additional_special_tokens": ["<|tool_call|>", "<|tool_result|>"]})
    base = load_base(tiny_model_dir)
    base.resize_token_embeddings(len(grown))
    torch.manual_seed(2)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(0.05 * torch.randn_like(param))  # trained: differs from the base
    return model.eval(), grown


def test_a_grown_vocabulary_exports_its_embeddings_and_reloads(tokenizer, tmp_path, tiny_model_dir, prepared):
    """The one case where modules_to_save belongs in the adapter: new tokens need their rows."""
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoTokenizer

    model, grown = _grown_vocabulary_model(tiny_model_dir, tokenizer)
    new_id = grown.convert_tokens_to_ids("<|tool_call|>")
    assert new_id >= json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    ids = torch.tensor([grown("Call a tool <|tool_call|> now")["input_ids"]])
    assert new_id in ids[0].tolist()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    _export(model, grown, tmp_path, tiny_model_dir, prepared)

    adapter = tmp_path / "out" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["embed_tokens", "lm_head"]
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        whole = {k: f.get_tensor(k).shape for k in f.keys() if "lora_" not in k}
    assert any("embed_tokens" in k and shape[0] == len(grown) for k, shape in whole.items()), whole
    assert any("lm_head" in k and shape[0] == len(grown) for k, shape in whole.items()), whole
    reloaded_tok = AutoTokenizer.from_pretrained(adapter)
    assert reloaded_tok.convert_tokens_to_ids("<|tool_call|>") == new_id

    base = load_base(tiny_model_dir)
    base.resize_token_embeddings(len(reloaded_tok))
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected)


def test_whole_modules_without_a_vocabulary_change_are_refused_before_writing(tokenizer, tmp_path, tiny_model_dir,
                                                                               prepared):
    """vLLM cannot serve modules_to_save: an adapter that trains lm_head whole on an unchanged
    vocabulary fails export and leaves no output folder behind."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    model = get_peft_model(load_base(tiny_model_dir), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"],
        task_type="CAUSAL_LM"))
    with pytest.raises(ExportError, match=r"trains whole modules \(\['lm_head'\]\).*vocabulary is unchanged"):
        _export(model, tokenizer, tmp_path, tiny_model_dir, prepared)
    assert not (tmp_path / "out").exists()
