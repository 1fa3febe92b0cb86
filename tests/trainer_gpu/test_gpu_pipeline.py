"""The trainer on a CUDA GPU: QLoRA through bitsandbytes 4-bit loading, and bf16 LoRA, through
the real pipeline (data preparation, training, evaluation, export) without Ray.

Skipped with a reason where there is no CUDA device or no bitsandbytes (CI machines have
neither): run them on a GPU machine with `pytest -m gpu tests/trainer_gpu`. Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)"),
]

CODES = {f"item {i}": f"SKU-{(i * 7919) % 1000:03d}" for i in range(24)}


def _dataset(path: Path) -> Path:
    """A task the tiny random model cannot do until trained: fixed code answers per item."""
    rows = [{"instruction": f"What is the code of {item}?", "output": code} for item, code in CODES.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _job(tiny_model_dir: Path, tmp_path: Path, method: dict, base_model: dict):
    from kubetune.api import parse_finetunejob

    return parse_finetunejob({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": f"gpu-{method['type']}", "namespace": "default"},
        "spec": {
            "baseModel": {"uri": str(tiny_model_dir), **base_model},
            "datasets": [{"name": "codes", "uri": str(_dataset(tmp_path / "codes.jsonl")), "format": "alpaca"}],
            "method": method,
            "hyperparameters": {"maxSteps": 30, "batchSize": 8, "learningRate": 0.005, "warmupRatio": 0,
                                "seed": 11},
            "resources": {"workers": 1, "gpusPerWorker": 1},
            "evaluation": {"metrics": ["loss"], "safety": {"enabled": False}},
            "output": {"uri": str(tmp_path / "out")},
        },
    })


def _run(job, tmp_path: Path):
    from kubetune.trainer import pipeline

    return pipeline.run(job, output=tmp_path / "out", use_ray=False)


@pytest.fixture()
def bnb():
    return pytest.importorskip("bitsandbytes", reason="QLoRA needs the bitsandbytes package")


def test_qlora_loads_the_base_in_4bit_and_trains_the_adapter_on_the_gpu(bnb, tiny_model_dir, tmp_path):
    from kubetune.trainer import model_init

    job = _job(tiny_model_dir, tmp_path, {"type": "qlora", "lora": {"rank": 8, "alpha": 16}},
               {"quantization": {"bits": 4, "quantType": "nf4", "computeDtype": "bfloat16"}})
    base = model_init.load_model(job.spec, model_init.resolve_model_dir(job.spec), device="cuda")
    four_bit = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no linear layer was loaded as bitsandbytes Linear4bit"
    assert all(m.weight.device.type == "cuda" for m in four_bit)
    del base

    result = _run(job, tmp_path)
    losses = result.training.losses
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses
    assert result.training.trainable_parameters < result.training.total_parameters / 2
    out = result.output_dir
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["kind"] == "adapter"
    assert manifest["config"]["method"]["type"] == "qlora"
    assert manifest["metrics"]["evalLossDelta"] < 0, manifest["metrics"]


def test_bf16_lora_trains_on_the_gpu(tiny_model_dir, tmp_path):
    job = _job(tiny_model_dir, tmp_path, {"type": "lora", "lora": {"rank": 8, "alpha": 16}}, {"dtype": "bfloat16"})
    result = _run(job, tmp_path)
    losses = result.training.losses
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses
    metrics = json.loads((result.output_dir / "manifest.json").read_text())["metrics"]
    assert metrics["evalLossDelta"] < 0, metrics
