"""The pipeline without Ray (use_ray=False runs the same loop in this process): DPO with a full fine-tune."""

from __future__ import annotations

import json

from kubetune.trainer import pipeline
from kubetune.trainer.data_prepare import PreferenceSample, SftSample
from kubetune.trainer.progress import RecordingSink


def test_preference_pairs_are_evaluated_on_the_chosen_answer():
    [sample] = pipeline.validation_for_eval([PreferenceSample([1, 2], [3, 4], [5])])
    assert isinstance(sample, SftSample)
    assert sample.input_ids == [1, 2, 3, 4] and sample.labels == [-100, -100, 3, 4]


def test_dpo_full_fine_tune_runs_end_to_end_in_process(make_job, tmp_path):
    pairs = [{"prompt": f"Is {n} even?", "chosen": "yes" if n % 2 == 0 else "no", "rejected": "maybe"} for n in range(12)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    job = make_job({
        "datasets": [{"name": "pairs", "uri": str(data), "format": "preference"}],
        "method": {"type": "full"}, "objective": {"type": "dpo", "beta": 0.5},
        "preprocessing": {"validationSplit": 0.25},
        "hyperparameters": {"maxSteps": 3, "batchSize": 2, "learningRate": 0.003},
        "evaluation": {"metrics": ["loss"], "gates": [{"metric": "evalLoss", "operator": "<", "threshold": 1000}]},
    })
    sink = RecordingSink()
    result = pipeline.run(job, local=True, sinks=[sink], use_ray=False)
    out = result.output_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["kind"] == "full" and (out / "merged" / "config.json").is_file()
    assert manifest["config"]["objective"]["type"] == "dpo"
    assert "evalLoss" in manifest["metrics"] and manifest["gatesPassed"] is True
    assert result.training.losses[0] > 0 and len(result.training.losses) == 3
    phases = [e[0] for kind, e in sink.events if kind == "phase"]
    assert phases[0] == "Training" and phases[-2:] == ["Evaluating", "Exporting"]
    assert sink.events[-1][0] == "result" and sink.events[-1][1]["artifact"]["kind"] == "full"
    # The dataset report reached the sinks (so FineTuneJob.status.dataset) before training began.
    first_result = next(i for i, (kind, _) in enumerate(sink.events) if kind == "result")
    dataset = sink.events[first_result][1]["dataset"]
    assert first_result < next(i for i, (kind, _) in enumerate(sink.events) if kind == "progress")
    assert (dataset["rowsIn"], dataset["train"], dataset["validation"]) == (12, 9, 3)
    assert dataset["sources"] == [{"name": "pairs", "rowsRead": 12, "rowsUsed": 12, "badRows": 0}]
    assert dataset["digest"] == json.loads((out / "dataset_report.json").read_text())["digest"]
    assert [p["step"] for p in sink.progress()] == [1, 2, 3]
