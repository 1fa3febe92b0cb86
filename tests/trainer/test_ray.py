"""Training on a real local Ray (TorchTrainer, DDP over gloo) and the `kubetune train` command.

Each Ray fit costs ~30 s of worker start-up here, so there are two: a 2-worker run compared
with the same job in one process, and the end-to-end command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.cli import main
from kubetune.trainer import checkpoint as ckpt
from kubetune.trainer import loop, pipeline
from kubetune.trainer.progress import RecordingSink


@pytest.mark.slow
def test_two_ray_workers_follow_the_single_worker_loss_curve(ray_session, make_job, sft_samples, tokenizer, tmp_path):
    """2 workers x batch 1 see the same sequences per step as 1 worker x batch 2: same losses."""
    spec = {"method": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}},
            "preprocessing": {"packing": False}, "hyperparameters": {"maxSteps": 4, "learningRate": 0.01}}
    single = make_job({**spec, "hyperparameters": {**spec["hyperparameters"], "batchSize": 2}})
    one = loop.train_loop(loop.LoopConfig(spec=single.spec, model_dir=single.spec.base_model.uri, train=sft_samples,
                                          checkpoint_dir=str(tmp_path / "one"), pad_id=tokenizer.pad_token_id))
    double = make_job({**spec, "hyperparameters": {**spec["hyperparameters"], "batchSize": 1},
                       "resources": {"workers": 2, "gpusPerWorker": 0}})
    sink = RecordingSink()
    two = pipeline.train(double, model_dir=Path(double.spec.base_model.uri), train_samples=sft_samples,
                         pad_id=tokenizer.pad_token_id, checkpoint_dir=tmp_path / "two", local=True, sink=sink)
    assert two.total_steps == 4 and len(two.losses) == 4
    assert two.losses == pytest.approx(one.losses, rel=1e-4)
    assert two.losses[-1] < two.losses[0]
    assert [p["step"] for p in sink.progress()] == [1, 2, 3, 4]  # relayed from rank 0 to the driver
    assert ckpt.latest_checkpoint(tmp_path / "two").step == 4
    assert any((tmp_path / "two" / pipeline.RAY_STORAGE).iterdir())  # Ray's run storage under ours


def _write_job(tmp_path: Path, model_dir: Path, **spec_extra) -> Path:
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)} for a in range(4) for b in range(3)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "baseModel": {"uri": str(model_dir)},
        "datasets": [{"name": "sums", "uri": "train.jsonl", "format": "alpaca"}],
        "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8}},
        "preprocessing": {"validationSplit": 0.25},
        "hyperparameters": {"maxSteps": 3, "batchSize": 1, "learningRate": 0.01},
        "resources": {"workers": 1, "gpusPerWorker": 0},
        "checkpointing": {"everySteps": 2},
        "evaluation": {"metrics": ["loss", "perplexity"], "safety": {"enabled": False},
                       "gates": [{"metric": "evalLoss", "operator": "<", "threshold": 1000}]},
        "output": {"uri": str(tmp_path / "artifact")},
        **spec_extra,
    }
    job = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "sums", "namespace": "default"}, "spec": spec}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.slow
def test_train_command_produces_the_contract_artifact(ray_session, tiny_model_dir, tmp_path, capsys):
    job = _write_job(tmp_path, tiny_model_dir)
    assert main(["train", "-f", str(job), "--local"]) == 0
    out = tmp_path / "artifact"
    for name in ("manifest.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "evaluation.json", "dataset_report.json", "reference.jsonl", "README.md", "progress.jsonl"):
        assert (out / name).is_file(), name
    assert ckpt.latest_checkpoint(out / "checkpoints").step == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["kind"] == "adapter" and manifest["artifact"]["loraRank"] == 4
    assert manifest["gatesPassed"] is True and "evalLoss" in manifest["metrics"]
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert [e["phase"] for e in events if e["event"] == "phase"][-2:] == ["Evaluating", "Exporting"]
    assert events[-1]["event"] == "result" and events[-1]["artifact"]["kind"] == "adapter"
    assert "artifact written to" in capsys.readouterr().out


def test_train_command_config_errors_exit_2_before_training(tiny_model_dir, tmp_path, capsys):
    job = _write_job(tmp_path, tmp_path / "missing-model")
    assert main(["train", "-f", str(job), "--local"]) == 2
    err = capsys.readouterr().err
    assert "missing-model" in err and "does not exist" in err
    assert not (tmp_path / "artifact" / "checkpoints").exists()

    qlora = _write_job(tmp_path, tiny_model_dir, method={"type": "qlora"},
                       baseModel={"uri": str(tiny_model_dir), "quantization": {"bits": 4}})
    assert main(["train", "-f", str(qlora), "--local"]) == 2
    assert "qlora needs a CUDA GPU; use method lora on CPU" in capsys.readouterr().err


def test_train_command_rejects_an_invalid_manifest_with_field_paths(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\nspec:\n  method: {type: magic}\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "spec.method.type" in err and "spec.baseModel" in err


@pytest.mark.slow
def test_a_failed_ray_run_keeps_its_checkpoints_and_a_rerun_resumes(ray_session, make_job, sft_samples, tokenizer, tmp_path):
    """A worker dies after step 3 (after the step-2 checkpoint); the rerun continues from step 2."""
    from kubetune.trainer.errors import TrainingFailedError

    job = make_job({"hyperparameters": {"maxSteps": 4}, "checkpointing": {"everySteps": 2}})
    checkpoints = tmp_path / "ck"
    with pytest.raises(TrainingFailedError, match="resumes from the latest"):
        pipeline.train(job, model_dir=Path(job.spec.base_model.uri), train_samples=sft_samples,
                       pad_id=tokenizer.pad_token_id, checkpoint_dir=checkpoints, local=True, fail_after_step=3)
    assert [c.step for c in ckpt.list_checkpoints(checkpoints)] == [2]
    resumed = pipeline.train(job, model_dir=Path(job.spec.base_model.uri), train_samples=sft_samples,
                             pad_id=tokenizer.pad_token_id, checkpoint_dir=checkpoints, local=True, use_ray=False)
    assert resumed.start_step == 2 and len(resumed.losses) == 4
    assert ckpt.latest_checkpoint(checkpoints).step == 4


def test_config_errors_raised_in_a_worker_are_found_in_rays_exception():
    from kubetune.trainer.distributed import config_error_in
    from kubetune.trainer.errors import TrainerConfigError

    class WorkerGroupError(RuntimeError):
        def __init__(self, failures):
            super().__init__("workers failed")
            self.worker_failures = failures

    inner = TrainerConfigError("checkpoint does not match spec.method")
    assert config_error_in(WorkerGroupError({0: RuntimeError("x"), 1: inner})) is inner
    assert config_error_in(WorkerGroupError({0: RuntimeError("x")})) is None


def test_cpu_quantities_become_whole_worker_cpus():
    from kubetune.trainer.distributed import cpu_quantity

    assert [cpu_quantity(q) for q in ("4", "500m", 2, "2500m")] == [4, 1, 2, 2]


@pytest.mark.slow
def test_killed_train_command_resumes_from_its_last_checkpoint(ray_session, tiny_model_dir, tmp_path):
    """SIGKILL the in-pod entrypoint once a checkpoint exists; the same command again continues from it.

    The killed driver is connected to this session's Ray (as a pod's driver is to KubeRay's),
    so Ray reaps the dead job's workers and nothing is left running.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    job = _write_job(tmp_path, tiny_model_dir, hyperparameters={"maxSteps": 40, "batchSize": 1, "learningRate": 0.005},
                     checkpointing={"everySteps": 5, "keepLast": 2})
    checkpoints = tmp_path / "artifact" / "checkpoints"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "kubetune", "train", "--config", str(job), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while ckpt.latest_checkpoint(checkpoints) is None and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = ckpt.latest_checkpoint(checkpoints).step
    assert 5 <= killed_at < 40, "the run finished before it could be killed"

    assert main(["train", "--config", str(job), "--quiet"]) == 0
    events = [json.loads(line) for line in (tmp_path / "artifact" / "progress.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if e["event"] == "progress"]
    resumed_from = len(steps) - 1 - steps[::-1].index(killed_at + 1)  # the second run's first report
    assert steps[0] == 1 and steps[resumed_from - 1] >= killed_at
    assert steps[resumed_from:] == list(range(killed_at + 1, 41))  # continued, not restarted at 1
    meta = ckpt.latest_checkpoint(checkpoints).meta()
    assert meta["step"] == 40 and len(meta["losses"]) == 40
