"""Failures before training: each names what to change, and no Ray worker is started."""

from __future__ import annotations

import json

import pytest

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


def test_loaded_model_uses_sdpa_and_no_remote_code(make_job):
    job = make_job()
    model = model_init.load_model(job.spec, model_init.resolve_model_dir(job.spec))
    assert model.config._attn_implementation == "sdpa"
    assert model.config.use_cache is False
    assert next(model.parameters()).dtype.is_floating_point


def test_missing_evaluation_prompts_file_fails_before_training(make_job, tmp_path):
    job = make_job({"evaluation": {"promptsUri": str(tmp_path / "eval.jsonl")}})
    with pytest.raises(TrainerConfigError, match="promptsUri .* is not a file"):
        pipeline.preflight(job)
