"""The loop's planning, schedules, checkpoints and resume (in-process, world size 1)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kubetune.api.finetunejob import Hyperparameters
from kubetune.trainer import checkpoint as ckpt
from kubetune.trainer import loop


def _train(job, samples, tokenizer, checkpoint_dir, **kw):
    return loop.train_loop(loop.LoopConfig(
        spec=job.spec, model_dir=job.spec.base_model.uri, train=samples,
        checkpoint_dir=str(checkpoint_dir), pad_id=tokenizer.pad_token_id, **kw,
    ))


def test_learning_rate_schedules():
    hp = Hyperparameters(learning_rate=1.0, warmup_ratio=0.2, scheduler="cosine")
    lrs = [loop.lr_at(s, 10, hp) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]  # linear warmup over 2 steps
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # then decays
    assert lrs[-1] < 0.05
    linear = Hyperparameters(learning_rate=1.0, warmup_ratio=0, scheduler="linear")
    assert [loop.lr_at(s, 4, linear) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    constant = Hyperparameters(learning_rate=0.1, warmup_ratio=0, scheduler="constant")
    assert {loop.lr_at(s, 5, constant) for s in range(5)} == {0.1}


def test_step_plan_from_epochs_and_max_steps():
    hp = Hyperparameters(batch_size=2, gradient_accumulation_steps=2, epochs=1.5)
    plan = loop.plan_steps(40, 2, hp)
    assert (plan.steps_per_epoch, plan.total_steps, plan.per_step) == (5, 8, 8)
    assert loop.plan_steps(40, 2, Hyperparameters(batch_size=2, max_steps=3)).total_steps == 3


def test_micro_batches_split_a_step_between_workers_without_overlap():
    hp = Hyperparameters(batch_size=2, gradient_accumulation_steps=2)
    plan = loop.plan_steps(16, 2, hp)
    step_rows = [loop.micro_batch_indices(0, k, r, plan, hp, seed=1) for k in range(2) for r in range(2)]
    flat = [i for rows in step_rows for i in rows]
    assert len(set(flat)) == 8  # one step uses 8 distinct sequences
    epoch = {i for s in range(plan.steps_per_epoch) for k in range(2) for r in range(2)
             for i in loop.micro_batch_indices(s, k, r, plan, hp, seed=1)}
    assert epoch == set(range(16))  # an epoch sees every sequence once
    assert loop.micro_batch_indices(3, 1, 1, plan, hp, seed=1) == loop.micro_batch_indices(3, 1, 1, plan, hp, seed=1)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    root = tmp_path / "ck"
    for step in (2, 4, 6):
        ckpt.save_checkpoint(root, step, trainable={"w": torch.full((2,), float(step))}, optimizer={"state": {}},
                             meta={"losses": [1.0] * step}, keep_last=2)
    (root / ".tmp-step-00000008-deadbeef").mkdir()  # a save killed half-way
    (root / "step-00000009").mkdir()  # renamed but without meta.json: not complete
    assert [c.step for c in ckpt.list_checkpoints(root)] == [4, 6]
    latest = ckpt.latest_checkpoint(root)
    assert latest.step == 6 and latest.meta()["step"] == 6
    assert torch.equal(ckpt.load_trainable(latest)["w"], torch.full((2,), 6.0))
    ckpt.save_checkpoint(root, 8, trainable={}, optimizer={"state": {}}, meta={}, keep_last=2)
    assert not list(root.glob(".tmp-*"))


def test_killed_run_resumes_from_its_checkpoint_with_identical_losses(make_job, sft_samples, tokenizer, tmp_path):
    """A run that dies after step 3 and is restarted continues at step 4 and matches an uninterrupted run.

    LoRA dropout is on, so this also checks that the RNG of resumed steps is reproduced.
    """
    spec = {"method": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.1}},
            "hyperparameters": {"maxSteps": 6, "batchSize": 2, "learningRate": 0.005, "warmupRatio": 0.2},
            "checkpointing": {"everySteps": 3, "keepLast": 1}, "preprocessing": {"packing": False}}
    job = make_job(spec)
    straight = _train(job, sft_samples, tokenizer, tmp_path / "straight")

    killed_dir = tmp_path / "killed"
    with pytest.raises(loop.SimulatedFailure):
        _train(job, sft_samples, tokenizer, killed_dir, fail_after_step=4)
    assert [c.step for c in ckpt.list_checkpoints(killed_dir)] == [3]  # step 4 was lost with the worker
    resumed = _train(job, sft_samples, tokenizer, killed_dir)
    assert resumed.start_step == 3
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    final_a = ckpt.load_trainable(ckpt.latest_checkpoint(tmp_path / "straight"))
    final_b = ckpt.load_trainable(ckpt.latest_checkpoint(killed_dir))
    for name in final_a:
        torch.testing.assert_close(final_a[name], final_b[name], rtol=1e-4, atol=1e-6)
    meta = ckpt.latest_checkpoint(killed_dir).meta()
    assert meta["step"] == 6 and meta["totalSteps"] == 6 and len(meta["losses"]) == 6


def test_progress_reaches_the_sink_with_the_wire_keys(make_job, sft_samples, tokenizer, checkpoint_dir):
    from kubetune.trainer.progress import PROGRESS_KEYS, RecordingSink

    sink = RecordingSink()
    job = make_job({"hyperparameters": {"maxSteps": 2}})
    result = _train(job, sft_samples, tokenizer, checkpoint_dir, sink=sink)
    reports = sink.progress()
    assert [r["step"] for r in reports] == [1, 2]
    assert all(set(r) == set(PROGRESS_KEYS) for r in reports)
    assert reports[-1]["totalSteps"] == 2 and reports[-1]["etaSeconds"] == 0
    assert reports[-1]["loss"] == pytest.approx(result.losses[-1])
    assert all(r["tokensPerSecond"] > 0 for r in reports)
    json.dumps(reports)  # wire-ready


def test_a_checkpoint_from_another_method_is_refused(make_job, sft_samples, tokenizer, checkpoint_dir):
    from kubetune.trainer.errors import TrainerConfigError

    _train(make_job({"hyperparameters": {"maxSteps": 1}}), sft_samples, tokenizer, checkpoint_dir)
    full = make_job({"method": {"type": "full"}, "hyperparameters": {"maxSteps": 2}})
    with pytest.raises(TrainerConfigError, match="does not match spec.method"):
        _train(full, sft_samples, tokenizer, checkpoint_dir)


# ---------------------------------------------------------------- forward token budget


class _Row:
    def __init__(self, n):
        self.input_ids = [0] * n


def test_forward_chunks_keep_order_and_stay_within_the_budget():
    rows = [_Row(n) for n in (300, 200, 500, 100, 1200, 50)]
    chunks = loop.forward_chunks(rows, 1024)
    assert [[len(r.input_ids) for r in c] for c in chunks] == [[300, 200], [500, 100], [1200], [50]]
    assert [r for c in chunks for r in c] == rows  # nothing dropped, nothing reordered
    # the padded size of every group with more than one row is within the budget
    assert all(len(c) * max(len(r.input_ids) for r in c) <= 1024 for c in chunks if len(c) > 1)
    assert loop.forward_chunks(rows, 0) == [rows]
    assert loop.forward_chunks([], 1024) == []
    equal = [_Row(512)] * 8
    assert [len(c) for c in loop.forward_chunks(equal, 1024)] == [2, 2, 2, 2]


def test_a_preference_pair_counts_twice_its_widest_side():
    from kubetune.trainer.data_prepare import PreferenceSample

    pair = PreferenceSample(prompt_ids=[1] * 10, chosen_ids=[2] * 5, rejected_ids=[3] * 7)
    assert loop.forward_width(pair) == 34  # chosen and rejected rows, both padded to 10 + 7
    assert [len(c) for c in loop.forward_chunks([pair] * 3, 68)] == [2, 1]


def test_forward_token_budget_defaults_by_device_and_reads_the_environment():
    from kubetune.trainer.errors import TrainerConfigError

    assert loop.resolve_forward_tokens(None, "cpu") == loop.FORWARD_TOKENS_CPU
    assert loop.resolve_forward_tokens(None, "cuda") == 0
    assert loop.resolve_forward_tokens(0, "cpu") == 0
    assert loop.forward_tokens_from_env({}) is None
    assert loop.forward_tokens_from_env({"KUBETUNE_FORWARD_TOKENS": "auto"}) is None
    assert loop.forward_tokens_from_env({"KUBETUNE_FORWARD_TOKENS": "2048"}) == 2048
    assert loop.forward_tokens_from_env({"KUBETUNE_FORWARD_TOKENS": "0"}) == 0
    with pytest.raises(TrainerConfigError, match="KUBETUNE_FORWARD_TOKENS='-5'"):
        loop.forward_tokens_from_env({"KUBETUNE_FORWARD_TOKENS": "-5"})
    with pytest.raises(TrainerConfigError, match="KUBETUNE_FORWARD_TOKENS"):
        loop.forward_tokens_from_env({"KUBETUNE_FORWARD_TOKENS": "\u00b2"})  # a digit to isdigit(), not to int()


def _split_job(make_job, objective):
    spec = {"method": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": 3, "batchSize": 4, "gradientAccumulationSteps": 2,
                                "learningRate": 0.005, "warmupRatio": 0},
            "checkpointing": {"everySteps": 1}}
    if objective == "dpo":
        spec["objective"] = {"type": "dpo", "beta": 0.1}
        spec["datasets"] = [{"name": "pairs", "uri": "pairs.jsonl", "format": "preference"}]
    else:
        spec["preprocessing"] = {"packing": False}  # rows of different widths: forwards pad
    return make_job(spec)


@pytest.fixture
def forwards(monkeypatch) -> list[int]:
    """The row count of every forward the loop collates, in order."""
    seen: list[int] = []
    collate = loop.collate
    monkeypatch.setattr(loop, "collate", lambda rows, *a, **kw: seen.append(len(rows)) or collate(rows, *a, **kw))
    return seen


def _same_training(dir_a, dir_b, a, b):
    assert b.losses == pytest.approx(a.losses, rel=1e-5)
    weights_a = ckpt.load_trainable(ckpt.latest_checkpoint(dir_a))
    weights_b = ckpt.load_trainable(ckpt.latest_checkpoint(dir_b))
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:  # Adam amplifies float noise on ~0 gradients: the tolerance of test_methods
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=1e-3, atol=5e-5)


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_splitting_a_micro_batch_into_forwards_gives_the_same_training(
        make_job, sft_samples, preference_samples, tokenizer, tmp_path, forwards, objective):
    """Several small forwards into one gradient train exactly as one big forward: same losses and
    weights, whether every row is its own forward or the rows go in padded groups (dropout off:
    its masks are drawn per forward, so with dropout the runs would draw different masks)."""
    job = _split_job(make_job, objective)
    samples = preference_samples if objective == "dpo" else sft_samples

    whole = _train(job, samples, tokenizer, tmp_path / "whole", forward_tokens=0)
    assert forwards == [4] * 6  # 3 steps x 2 micro-batches of 4 rows
    forwards.clear()
    single = _train(job, samples, tokenizer, tmp_path / "single", forward_tokens=1)
    assert forwards == [1] * 24  # every row its own forward
    _same_training(tmp_path / "whole", tmp_path / "single", whole, single)

    forwards.clear()
    widest = max(loop.forward_width(s) for s in samples)
    grouped = _train(job, samples, tokenizer, tmp_path / "grouped", forward_tokens=2 * widest)
    assert sum(forwards) == 24 and 6 < len(forwards) < 24 and max(forwards) >= 2, forwards
    _same_training(tmp_path / "whole", tmp_path / "grouped", whole, grouped)


def test_cpu_workers_use_the_cpu_budget_by_default(make_job, sft_samples, tokenizer, tmp_path, forwards, monkeypatch):
    job = _split_job(make_job, "sft")
    monkeypatch.setattr(loop, "FORWARD_TOKENS_CPU", 1)
    _train(job, sft_samples, tokenizer, tmp_path / "ckpt")  # forward_tokens=None: the device default
    assert forwards == [1] * 24


def test_a_resume_under_another_budget_warns_and_continues(make_job, sft_samples, tokenizer, tmp_path, caplog):
    job = _split_job(make_job, "sft")
    whole = _train(job, sft_samples, tokenizer, tmp_path / "whole", forward_tokens=0)
    with pytest.raises(loop.SimulatedFailure):
        _train(job, sft_samples, tokenizer, tmp_path / "killed", forward_tokens=0, fail_after_step=2)
    assert ckpt.latest_checkpoint(tmp_path / "killed").meta()["forwardTokens"] == 0
    with caplog.at_level("WARNING"):
        resumed = _train(job, sft_samples, tokenizer, tmp_path / "killed", forward_tokens=1)
    assert "written with forwards of at most 0 tokens, this run uses 1" in caplog.text
    assert resumed.start_step == 2
    _same_training(tmp_path / "whole", tmp_path / "killed", whole, resumed)  # no dropout: still the same run
