"""The quickstart's orchestration: the local job, payload splitting, and how failures read."""

from __future__ import annotations

import argparse
import io
import json
import sys

import pytest
import yaml

from kubetune.quickstart_pipeline import (
    ADAPTER_NAME,
    EXAMPLE,
    Options,
    QuickstartPipeline,
    local_job,
    split_payload_rows,
)
from kubetune.quickstart_proc import Background, StepFailed, run_logged


def test_example_manifests_are_valid():
    from kubetune.api import parse_finetunejob, parse_modeldeployment

    job = parse_finetunejob(yaml.safe_load((EXAMPLE / "finetunejob.yaml").read_text()))
    deployment = parse_modeldeployment(yaml.safe_load((EXAMPLE / "modeldeployment.yaml").read_text()))
    assert job.spec.method.type == "lora" and job.spec.evaluation.gates
    assert deployment.spec.adapters[0].name == ADAPTER_NAME
    assert deployment.spec.adapters[0].fine_tune_job_ref.name == job.metadata["name"]


def test_local_job_points_at_local_files_and_stays_valid(tmp_path):
    from kubetune.api import parse_finetunejob

    example = yaml.safe_load((EXAMPLE / "finetunejob.yaml").read_text())
    job = local_job(example, model_dir=tmp_path / "m", train=tmp_path / "t.jsonl", eval_prompts=tmp_path / "e.jsonl",
                    output=tmp_path / "out", steps=5)
    parsed = parse_finetunejob(job)
    spec = parsed.spec
    assert spec.base_model.uri == str(tmp_path / "m")
    assert spec.datasets[0].uri == str(tmp_path / "t.jsonl")
    assert spec.evaluation.prompts_uri == str(tmp_path / "e.jsonl")
    assert spec.output.uri == str(tmp_path / "out")
    assert spec.resources.gpus_per_worker == 0 and spec.hyperparameters.max_steps == 5
    assert spec.deploy_to is None
    assert example["spec"]["output"]["uri"].startswith("pvc://"), "the example itself is left untouched"


def test_payload_rows_split_by_topic_and_exclude_the_base_model():
    shifted = {"Where is my parcel?"}
    rows = [
        {"model": "smollm2-135m-instruct", "adapter": None, "prompt": "user: Return the catalogue record..."},
        {"model": "smollm2-135m-instruct", "adapter": ADAPTER_NAME, "prompt": "user: Return the catalogue record..."},
        {"model": ADAPTER_NAME, "adapter": None, "prompt": "user: Where is my parcel?"},
    ]
    normal, off_topic = split_payload_rows(rows, shifted)
    assert normal == [rows[1]] and off_topic == [rows[2]]


def test_run_logged_tees_output_and_returns_it(tmp_path):
    echo = io.BytesIO()
    out = run_logged("demo", [sys.executable, "-c", "print('step 1/2'); print('done')"], tmp_path / "demo.log", echo=echo)
    assert "done" in out and b"step 1/2" in echo.getvalue()
    assert "done" in (tmp_path / "demo.log").read_text()


def test_run_logged_failure_names_step_command_log_and_tail(tmp_path):
    code = "import sys; print('loading'); print('boom: out of memory', file=sys.stderr); sys.exit(3)"
    with pytest.raises(StepFailed) as excinfo:
        run_logged("train", [sys.executable, "-c", code], tmp_path / "train.log", echo=None)
    text = str(excinfo.value)
    assert "step 'train' failed" in text and "exited with code 3" in text
    assert str(tmp_path / "train.log") in text and "boom: out of memory" in text


def test_run_logged_explains_an_unavailable_component(tmp_path):
    code = ("import sys; print('kubetune monitor: not available in this build (needs the evidently package; "
            "pip install kubetune[monitoring])', file=sys.stderr); sys.exit(2)")
    with pytest.raises(StepFailed, match="is not available in this build"):
        run_logged("monitor", [sys.executable, "-c", code], tmp_path / "m.log", echo=None)


def test_background_process_that_dies_fails_fast(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('address already in use'); sys.exit(1)"]
    with Background("serve", argv, tmp_path / "serve.log") as proc:
        with pytest.raises(StepFailed) as excinfo:
            proc.wait_until(lambda: False, timeout=60, what="the gateway", interval=0.1)
    assert "exited with code 1" in str(excinfo.value) and "address already in use" in str(excinfo.value)


def test_background_process_is_stopped_on_exit(tmp_path):
    argv = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(300)"]
    with Background("serve", argv, tmp_path / "serve.log") as proc:
        proc.wait_until(lambda: "up" in (tmp_path / "serve.log").read_text(), timeout=30, what="x", interval=0.1)
    assert proc.proc.poll() is not None


def test_pipeline_stops_at_the_first_failure_and_still_writes_the_summary(tmp_path, capsys):
    pipeline = QuickstartPipeline(Options(out=tmp_path, model=tmp_path / "no-such-model", echo=False))
    with pytest.raises(StepFailed, match="not a Hugging Face model folder"):
        pipeline.run()
    assert pipeline.finish(failed="model") is False
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == "model"
    assert summary["stages"][0] == {**summary["stages"][0], "name": "Model initialisation", "ok": False}
    assert "[FAIL]" in (tmp_path / "summary.txt").read_text()


def test_cli_rejects_bad_options(capsys):
    from kubetune.quickstart import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["quickstart", "--traffic", "4", "--score-prompts", "8"])
    assert run(args) == 2
    assert "--score-prompts cannot exceed --traffic" in capsys.readouterr().err
    args = parser.parse_args(["quickstart", "--shifted", "0"])
    assert run(args) == 2


def _deployment():
    from kubetune.api import parse_modeldeployment

    return parse_modeldeployment(yaml.safe_load((EXAMPLE / "modeldeployment.yaml").read_text()))


def _monitor_summary(drifted: bool, samples: int = 24, flag_ratio: float = 0.0) -> dict:
    """The shape `kubetune monitor --json` writes (kubetune.monitoring.drift)."""
    return {"drift_detected": drifted, "drift_share": 0.75 if drifted else 0.0, "status": "ok",
            "samples": {"reference": 400, "current": samples}, "message": "m",
            "safety": {"samples": samples, "flagRatio": flag_ratio}}


def test_drift_figures_read_the_monitor_summary():
    from kubetune.quickstart_pipeline import drift_figures

    figures = drift_figures(_monitor_summary(True))
    assert figures["driftDetected"] is True and figures["driftShare"] == 0.75 and figures["samples"] == 24
    assert drift_figures({"drift_detected": False, "drift_share": None, "samples": {"current": 3}})["driftShare"] == 0.0
    with pytest.raises(StepFailed, match="drift_detected"):
        drift_figures({"unexpected": True})


def test_retraining_decision_uses_the_policy_and_the_deployment_settings():
    """The real monitoring policy with examples/quickstart/modeldeployment.yaml (mode Suggest)."""
    pytest.importorskip("kubetune.monitoring.policy")
    from datetime import datetime, timedelta, timezone

    from kubetune.quickstart_pipeline import retraining_decision

    now = datetime.now(timezone.utc)
    live = now - timedelta(minutes=5)
    deployment = _deployment()
    drifted = retraining_decision(deployment, _monitor_summary(True), now=now, live_since=live)
    assert drifted["decision"] == "suggest" and drifted["trigger"] == "drift"
    calm = retraining_decision(deployment, _monitor_summary(False), now=now, live_since=live)
    assert calm["decision"] == "none" and calm["reason"] == "NoTrigger"
    few = retraining_decision(deployment, _monitor_summary(True, samples=3), now=now, live_since=live)
    assert few["decision"] == "none" and few["reason"] == "InsufficientSamples"
