"""Evaluation, the safety probe and export run on a Ray worker, not in the driver.

In a RayJob the driver is the head pod (no GPU, 1 CPU, 4 GiB). The test counts
`from_pretrained` calls of model classes in this process (the driver) during a real local-Ray
run: none. The figures the worker reports equal an in-process evaluation of the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from kubetune.trainer import finish, pipeline


@pytest.fixture()
def weight_loads(monkeypatch):
    """pids of every model weight load in this process (tokenizers are not counted)."""
    from transformers import PreTrainedModel

    loads = []
    original = PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(os.getpid())
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    return loads


@pytest.mark.slow
def test_the_driver_never_loads_weights_and_the_worker_reports_the_same_figures(
        ray_session, make_job, tmp_path, weight_loads, monkeypatch):
    rows = [{"instruction": f"say {n}", "output": str(n)} for n in range(16)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    job = make_job({
        "datasets": [{"name": "qa", "uri": str(tmp_path / "train.jsonl"), "format": "alpaca"}],
        "preprocessing": {"validationSplit": 0.25},
        "hyperparameters": {"maxSteps": 3, "batchSize": 2},
        "evaluation": {"metrics": ["loss", "perplexity", "exactMatch"], "maxNewTokens": 4,
                       "prompts": [{"prompt": "say 3", "reference": "3"}],
                       "safety": {"enabled": True}},
    })
    result = pipeline.run(job, local=True, use_ray=True)
    assert weight_loads == []  # tuned model, base model and probe all loaded on the Ray worker
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["artifact"]["kind"] == "adapter" and (result.output_dir / "adapter").is_dir()
    metrics = result.status["evaluation"]["metrics"]
    assert {"evalLoss", "perplexity", "exactMatch", "safetyFlagRatio"} <= set(metrics)

    # The same checkpoint evaluated in this process gives the same figures.
    model_dir, tokenizer = pipeline.preflight(job)
    data = pipeline.prepare_data(job, tokenizer, base_dir=None)
    here = finish.evaluate_and_export(finish.FinishInput(
        job=job, model_dir=str(model_dir), model_source=None, checkpoint=result.training.checkpoint,
        checkpoint_remote=None, prepared=dataclasses.replace(data, train=[]), output_dir=str(tmp_path / "again"),
        publish=False, max_lora_rank=None))
    assert weight_loads  # the counter does see loads in this process
    assert here["evaluation"]["metrics"] == pytest.approx(metrics, rel=1e-5)
    assert here["artifact"]["digest"] == result.status["artifact"]["digest"]
