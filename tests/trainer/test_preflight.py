"""Failures before training: each names what to change, and no Ray worker is started."""

from __future__ import annotations

import json

import pytest
import torch

from kubetune.api.finetunejob import MAX_LORA_RANK_ANNOTATION
from kubetune.trainer import model_init, pipeline
from kubetune.trainer.errors import TrainerConfigError


def test_missing_model_dir_names_the_path(make_job, tmp_path):
    job = make_job({"baseModel": {"uri": str(tmp_path / "nowhere")}})
    with pytest.raises(TrainerConfigError) as err:
        pipeline.preflight(job)
    assert str(tmp_path / "nowhere") in str(err.value)
    assert "spec.baseModel.uri" in str(err.value) and "does not exist" in str(err.value)


def test_folder_without_config_json_is_not_a_model(make_job, tmp_path):
    (tmp_path / "empty-model").mkdir()
    job = make_job({"baseModel": {"uri": str(tmp_path / "empty-model")}})
    with pytest.raises(TrainerConfigError, match="has no config.json"):
        pipeline.preflight(job)


def test_hub_name_is_looked_up_in_the_model_cache_never_downloaded(make_job, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_MODEL_CACHE", str(tmp_path / "cache"))
    job = make_job({"baseModel": {"uri": "someorg/somemodel"}})
    with pytest.raises(TrainerConfigError, match=str(tmp_path / "cache" / "someorg" / "somemodel")):
        model_init.resolve_model_dir(job.spec)


def test_qlora_on_cpu_fails_before_training_with_the_fix(make_job):
    job = make_job({"method": {"type": "qlora"}, "baseModel": {"quantization": {"bits": 4}}})
    with pytest.raises(TrainerConfigError, match="qlora needs a CUDA GPU; use method lora on CPU"):
        pipeline.preflight(job, cuda=False)


def test_qlora_on_a_gpu_without_bitsandbytes_says_so(make_job, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    job = make_job({"method": {"type": "qlora"}, "baseModel": {"quantization": {"bits": 4}}})
    with pytest.raises(TrainerConfigError, match="bitsandbytes"):
        model_init.check_hardware(job.spec, cuda=True)


def test_freeze_more_layers_than_the_model_has(make_job):
    job = make_job({"method": {"type": "freeze", "freeze": {"trainableLayers": 5}}})
    with pytest.raises(TrainerConfigError, match="trainableLayers is 5 but the model has 2 blocks"):
        pipeline.preflight(job)


def _promoting(job, rank_limit):
    """The job as the operator hands it to the trainer when it promotes into a deployment."""
    return job.model_copy(update={"metadata": {**job.metadata, "annotations": {MAX_LORA_RANK_ANNOTATION: rank_limit}}})


def test_an_adapter_above_the_deployments_max_rank_fails_before_training(make_job, monkeypatch):
    loaded = []
    monkeypatch.setattr(model_init, "resolve_model_dir", lambda *a, **k: loaded.append(1))  # never reached
    job = _promoting(make_job({"method": {"type": "lora", "lora": {"rank": 32}}, "deployTo": {"name": "support"}}), "16")
    with pytest.raises(TrainerConfigError) as err:
        pipeline.preflight(job)
    message = str(err.value)
    assert "spec.method.lora.rank: 32 is above the max LoRA rank 16 of ModelDeployment support" in message
    assert "spec.engine.maxLoraRank" in message and not loaded
    # The default rank (16) counts when spec.method.lora is unset.
    bare = make_job({"method": {"type": "dora"}})
    assert bare.spec.method.lora is None
    with pytest.raises(TrainerConfigError, match="rank: 16 is above the max LoRA rank 8"):
        pipeline.check_lora_rank(_promoting(bare, "8"))


def test_a_rank_within_the_limit_or_no_adapter_passes(make_job):
    pipeline.check_lora_rank(_promoting(make_job({"method": {"type": "lora", "lora": {"rank": 16}}}), "16"))
    pipeline.check_lora_rank(_promoting(make_job({"method": {"type": "full"}}), "1"))
    pipeline.check_lora_rank(make_job({"method": {"type": "lora", "lora": {"rank": 64}}}))  # no limit known
    with pytest.raises(TrainerConfigError, match="max-lora-rank.*'sixteen' is not a positive integer"):
        pipeline.check_lora_rank(_promoting(make_job(), "sixteen"))


def test_quantized_loading_settings_reach_bitsandbytes(make_job):
    """What QLoRA hands transformers (loading itself needs a CUDA GPU: tests/trainer_gpu)."""
    import torch

    eight = model_init.quantization_config(make_job({"method": {"type": "lora"}, "baseModel": {"quantization": {"bits": 8}}}).spec)
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = model_init.quantization_config(make_job({"method": {"type": "qlora"}, "baseModel": {"quantization": {
        "bits": 4, "quantType": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"}}}).spec)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert model_init.quantization_config(make_job().spec) is None


def test_dtype_by_device(make_job):
    import torch

    job = make_job()
    assert model_init.choose_dtype(job.spec, "cpu") == torch.float32
    assert model_init.choose_dtype(make_job({"baseModel": {"dtype": "bfloat16"}}).spec, "cpu") == torch.bfloat16


def test_bad_data_is_a_config_error_naming_the_file(make_job, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\nthis is not json\n')
    job = make_job({"datasets": [{"name": "qa", "uri": str(data), "format": "alpaca"}],
                    "preprocessing": {"maxBadRowsFraction": 0.0}})
    _, tokenizer = pipeline.preflight(job)
    with pytest.raises(TrainerConfigError, match="train.jsonl"):
        pipeline.prepare_data(job, tokenizer, base_dir=tmp_path)


def test_loaded_model_uses_sdpa_in_float32_on_cpu(make_job):
    job = make_job()
    model = model_init.load_model(job.spec, model_init.resolve_model_dir(job.spec))
    assert model.config._attn_implementation == "sdpa"
    assert model.config.use_cache is False
    assert next(model.parameters()).dtype == torch.float32


CUSTOM_CONFIG = """from transformers import LlamaConfig


class ShippedConfig(LlamaConfig):
    model_type = "kubetune_shipped_code"
"""
CUSTOM_MODEL = """from transformers import LlamaForCausalLM

from .configuration_shipped import ShippedConfig


class ShippedForCausalLM(LlamaForCausalLM):
    config_class = ShippedConfig
"""


def test_code_shipped_with_a_model_runs_only_when_the_spec_trusts_it(make_job, tiny_model_dir, tmp_path):
    """A model folder whose config points at its own Python files (auto_map), as on the hub."""
    import shutil

    folder = tmp_path / "shipped-code-model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="kubetune_shipped_code", auto_map={
        "AutoConfig": "configuration_shipped.ShippedConfig",
        "AutoModelForCausalLM": "modeling_shipped.ShippedForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_shipped.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_shipped.py").write_text(CUSTOM_MODEL)

    untrusted = make_job({"baseModel": {"uri": str(folder)}})
    assert untrusted.spec.base_model.trust_remote_code is False  # the default
    with pytest.raises(ValueError, match="trust_remote_code"):
        model_init.load_model(untrusted.spec, folder)
    trusted = make_job({"baseModel": {"uri": str(folder), "trustRemoteCode": True}})
    model = model_init.load_model(trusted.spec, folder)
    assert type(model).__name__ == "ShippedForCausalLM"


def test_missing_evaluation_prompts_file_fails_before_training(make_job, tmp_path):
    job = make_job({"evaluation": {"promptsUri": str(tmp_path / "eval.jsonl")}})
    with pytest.raises(TrainerConfigError, match="promptsUri .* is not a file"):
        pipeline.preflight(job)


@pytest.mark.parametrize("variable,value", [("KUBETUNE_FORWARD_TOKENS", "a lot"), ("KUBETUNE_ATTENTION", "flash"),
                                            ("KUBETUNE_COMPILE_BLOCKS", "maybe")])
def test_a_bad_trainer_environment_variable_fails_before_data_or_model(make_job, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(TrainerConfigError, match=f"{variable}={value!r}"):
        pipeline.preflight(make_job({}))
