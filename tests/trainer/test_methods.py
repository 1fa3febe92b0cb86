"""Methods and objectives learn: each overfits a fixed small set in a few in-process steps.

The per-worker loop runs directly in this process (world size 1, no Ray) so these stay fast;
the Ray path runs the same function (tests/trainer/test_ray.py).
"""

from __future__ import annotations

import pytest
import torch

from kubetune.trainer import loop, methods, model_init
from kubetune.trainer.methods_hft import CATEGORIES, apply_stage, find_blocks, select_halves, stage_of


def _train(job, samples, tokenizer, checkpoint_dir, **kw):
    cfg = loop.LoopConfig(
        spec=job.spec, model_dir=job.spec.base_model.uri, train=samples,
        checkpoint_dir=str(checkpoint_dir), pad_id=tokenizer.pad_token_id, **kw,
    )
    return loop.train_loop(cfg)


@pytest.mark.parametrize(
    "method",
    [
        {"type": "full"},
        {"type": "freeze", "freeze": {"trainableLayers": 1}},
        {"type": "lora", "lora": {"rank": 4, "alpha": 4, "rsLora": True}},
        {"type": "dora", "lora": {"rank": 4, "alpha": 8}},
        {"type": "hft", "hft": {"stages": 2, "seed": 3}},
    ],
    ids=lambda m: m["type"],
)
def test_each_method_overfits_a_fixed_set(method, make_job, sft_samples, tokenizer, checkpoint_dir):
    lr = 0.01 if method["type"] in ("lora", "dora") else 0.003
    job = make_job({"method": method, "hyperparameters": {"learningRate": lr}})  # one packed row of all 8
    result = _train(job, sft_samples, tokenizer, checkpoint_dir)
    assert len(result.losses) == 6
    assert result.losses[-1] < result.losses[0] - 0.3, result.losses
    assert 0 < result.trainable_parameters <= result.total_parameters


@pytest.mark.parametrize("objective,method", [("dpo", "lora"), ("dpo", "full"), ("orpo", "lora")])
def test_preference_objectives_learn(objective, method, make_job, preference_samples, tokenizer, checkpoint_dir):
    job = make_job({
        "datasets": [{"name": "pairs", "uri": "pairs.jsonl", "format": "preference"}],
        "method": {"type": method},
        "objective": {"type": objective, "beta": 0.5},
        "hyperparameters": {"learningRate": 0.01 if method == "lora" else 0.003, "batchSize": 4},
    })
    result = _train(job, preference_samples, tokenizer, checkpoint_dir)
    if objective == "dpo":
        # the policy starts equal to the reference: the loss is exactly log 2
        assert result.losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert result.losses[-1] < 0.9 * result.losses[0], result.losses


def _model(job):
    model = model_init.load_model(job.spec, model_init.resolve_model_dir(job.spec))
    return methods.apply_method(model, job.spec)


@pytest.mark.parametrize("kind", ["full", "freeze", "lora", "hft"])
def test_optimizer_holds_only_trainable_parameters(kind, make_job):
    job = make_job({"method": {"type": kind}})
    model = _model(job)
    optimizer = loop.build_optimizer(model, job.spec.hyperparameters)
    held = loop.optimizer_param_ids(optimizer)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert held == trainable
    if kind != "full":
        assert len(held) < len(list(model.parameters()))
    if kind == "lora":
        names = {n for n, p in model.named_parameters() if id(p) in held}
        assert names and all("lora_" in n for n in names)
        assert not any("lm_head" in n for n in names)  # all-linear excludes the output head


@pytest.mark.parametrize(("position", "block"), [("first", 0), ("last", 1)])  # the tiny model has 2 blocks
def test_freeze_trains_only_the_chosen_blocks(make_job, position, block):
    job = make_job({"method": {"type": "freeze", "freeze": {"trainableLayers": 1, "position": position}}})
    model = _model(job)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(f"model.layers.{block}.") for n in trainable)


def test_hft_selection_is_exactly_half_per_category_and_changes_per_stage():
    blocks = 4
    per_stage = [select_halves(blocks, seed=11, stage=s) for s in range(4)]
    for selection in per_stage:
        for block in selection:
            assert len(block.frozen["attention"]) == 2
            assert len(block.frozen["norm"]) == 1
            assert set(block.frozen["ffn"]) | set(block.trainable["ffn"]) == set(CATEGORIES["ffn"])
        ffn_frozen = sum(len(b.frozen["ffn"]) for b in selection)
        assert ffn_frozen * 2 == blocks * len(CATEGORIES["ffn"])  # half of the FFN overall
        per_block = [len(b.frozen["ffn"]) for b in selection]
        assert per_block in ([2, 1] * (blocks // 2), [1, 2] * (blocks // 2))  # 2 of 3 and 1 of 3, alternating
    assert len({tuple(tuple(sorted(b.frozen.items())) for b in s) for s in per_stage}) > 1
    assert select_halves(blocks, seed=11, stage=1) == per_stage[1]  # seeded: reproducible
    assert select_halves(blocks, seed=12, stage=1) != per_stage[1]


def test_hft_apply_stage_freezes_the_selected_modules(make_job):
    job = make_job({"method": {"type": "hft"}})
    model = model_init.load_model(job.spec, model_init.resolve_model_dir(job.spec))
    layers = find_blocks(model)
    selection = apply_stage(model, seed=5, stage=1)
    for sel, block in zip(selection, layers):
        for category, leaves in sel.frozen.items():
            for leaf in leaves:
                module = next(m for n, m in block.named_modules() if n.endswith(leaf))
                assert not any(p.requires_grad for p in module.parameters())
        for category, leaves in sel.trainable.items():
            for leaf in leaves:
                module = next(m for n, m in block.named_modules() if n.endswith(leaf))
                assert all(p.requires_grad for p in module.parameters())
    assert not model.get_input_embeddings().weight.requires_grad


def test_hft_stages_split_the_steps():
    assert [stage_of(s, 8, 4) for s in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [stage_of(s, 3, 10) for s in range(3)] == [0, 1, 2]


def test_hft_rebuilds_the_optimizer_per_stage_and_logs_selections(make_job, sft_samples, tokenizer, checkpoint_dir,
                                                                   monkeypatch):
    built = []  # (names the optimizer holds, names that train) at each optimizer the loop builds
    real_build = loop.build_optimizer

    def recording_build(model, hp):
        optimizer = real_build(model, hp)
        held = loop.optimizer_param_ids(optimizer)
        built.append(({n for n, p in model.named_parameters() if id(p) in held},
                      {n for n, p in model.named_parameters() if p.requires_grad}))
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", recording_build)
    job = make_job({"method": {"type": "hft", "hft": {"stages": 3, "seed": 1}}, "hyperparameters": {"maxSteps": 3, "learningRate": 0.003}})
    result = _train(job, sft_samples, tokenizer, checkpoint_dir)
    assert sorted(result.hft_selections) == [0, 1, 2]
    assert result.hft_selections[0] != result.hft_selections[1]
    stages = built[-3:]  # one optimizer per stage, over exactly the half that trains in it
    assert len(built) >= 3
    for held, trainable in stages:
        assert held == trainable and held
    assert stages[0][0] != stages[1][0] != stages[2][0]


def test_sft_loss_is_normalised_over_accumulated_micro_batches(make_job, sft_samples, tokenizer, tmp_path):
    """One batch of 4 and two accumulated micro-batches of 2 give the same loss and update."""
    common = {"method": {"type": "full"}, "preprocessing": {"packing": False},
              "hyperparameters": {"maxSteps": 2, "learningRate": 0.003, "maxGradNorm": 0}}
    one = make_job({**common, "hyperparameters": {**common["hyperparameters"], "batchSize": 4}})
    two = make_job({**common, "hyperparameters": {**common["hyperparameters"], "batchSize": 2, "gradientAccumulationSteps": 2}})
    a = _train(one, sft_samples, tokenizer, tmp_path / "a")
    b = _train(two, sft_samples, tokenizer, tmp_path / "b")
    assert a.losses == pytest.approx(b.losses, rel=1e-5)
    wa = torch.load(f"{a.checkpoint}/trainable.pt", weights_only=True)
    wb = torch.load(f"{b.checkpoint}/trainable.pt", weights_only=True)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-3, atol=5e-5)  # Adam amplifies float noise on ~0 grads


def test_gradient_clipping_bounds_the_update(make_job, sft_samples, tokenizer, tmp_path):
    """AdamW divides by the gradient's own scale, so clipping shows where gradients fall below
    its eps: clipped to a norm of 1e-12, one step barely moves the weights; unclipped it does."""
    from safetensors.torch import load_file

    common = {"method": {"type": "full"}, "preprocessing": {"packing": False}}
    deltas = {}
    for norm in (0.0, 1e-12):
        job = make_job({**common, "hyperparameters": {"maxSteps": 1, "learningRate": 0.01, "maxGradNorm": norm}})
        result = _train(job, sft_samples, tokenizer, tmp_path / str(norm))
        trained = torch.load(f"{result.checkpoint}/trainable.pt", weights_only=True)
        base = load_file(f"{job.spec.base_model.uri}/model.safetensors")
        deltas[norm] = max(float((trained[name].float() - base[name].float()).abs().max())
                           for name in trained if name in base)
    assert deltas[0.0] > 1e-3  # about the learning rate: Adam's first step is lr * sign(g)
    assert deltas[1e-12] < deltas[0.0] / 100


def test_gradient_checkpointing_gives_the_same_losses(make_job, sft_samples, tokenizer, tmp_path):
    """Recomputing activations must not change the maths (LoRA on a frozen base, dropout off)."""
    spec = {"method": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": 3}}
    plain = _train(make_job(spec), sft_samples, tokenizer, tmp_path / "plain")
    spec["hyperparameters"]["gradientCheckpointing"] = True
    recomputed = _train(make_job(spec), sft_samples, tokenizer, tmp_path / "gc")
    assert recomputed.losses == pytest.approx(plain.losses, rel=1e-5)
    assert recomputed.losses[-1] < recomputed.losses[0]


def test_lora_default_targets_every_linear_layer_but_the_head(make_job):
    """Default targetModules ["all-linear"]: all 7 projections of every block get LoRA, lm_head none."""
    from torch import nn

    job = make_job({"method": {"type": "lora"}})
    base = model_init.load_model(job.spec, model_init.resolve_model_dir(job.spec))
    linear = {n for n, m in base.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")}
    model = methods.apply_method(base, job.spec)
    adapted = {n.split("base_model.model.", 1)[1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert linear and adapted == linear
    blocks = len(find_blocks(model))
    assert len(adapted) == blocks * (len(CATEGORIES["attention"]) + len(CATEGORIES["ffn"]))


@pytest.mark.parametrize(("rs_lora", "scale"), [(False, 16 / 4), (True, 16 / 4 ** 0.5)])
def test_rslora_scales_the_update_by_alpha_over_the_square_root_of_the_rank(make_job, rs_lora, scale):
    job = make_job({"method": {"type": "lora", "lora": {"rank": 4, "alpha": 16, "rsLora": rs_lora}}})
    model = methods.apply_method(model_init.load_model(job.spec, model_init.resolve_model_dir(job.spec)), job.spec)
    scalings = [m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "scaling")]
    assert scalings and scalings == pytest.approx([scale] * len(scalings))


def test_dora_trains_the_magnitude_vectors(make_job):
    job = make_job({"method": {"type": "dora", "lora": {"rank": 4}}})
    model = _model(job)
    assert model.peft_config["default"].use_dora is True
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    magnitudes = {n for n in trainable if "lora_magnitude_vector" in n}
    assert magnitudes and len(magnitudes) == len({n for n in trainable if "lora_A" in n})
    lora_only = _model(make_job({"method": {"type": "lora", "lora": {"rank": 4}}}))
    assert not any("magnitude" in n for n, _ in lora_only.named_parameters())


def test_dpo_reference_of_an_adapter_is_the_base_model(make_job, preference_samples, tokenizer):
    """The LoRA-family reference is the policy with its adapter disabled: the base's log-probs, not the policy's."""
    from kubetune.trainer import objectives
    from kubetune.trainer.data_collate import collate_preference

    job = make_job({"datasets": [{"name": "pairs", "uri": "pairs.jsonl", "format": "preference"}],
                    "method": {"type": "lora", "lora": {"rank": 4}}, "objective": {"type": "dpo"}})
    torch.manual_seed(0)
    policy = _model(job)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained-looking adapter (B starts at zero)
    policy.train()
    pairs = objectives.concat_pairs(collate_preference(preference_samples[:3], pad_id=tokenizer.pad_token_id),
                                    tokenizer.pad_token_id)
    reference = objectives.Reference(policy, adapter=True)
    ref = reference.logps(policy, pairs)
    base = model_init.load_model(job.spec, model_init.resolve_model_dir(job.spec)).eval()
    with torch.no_grad():
        expected, _, _ = objectives.sequence_logps(base, pairs)
        policy.eval()
        tuned, _, _ = objectives.sequence_logps(policy, pairs)
    assert torch.allclose(ref, expected, atol=1e-4)
    assert not torch.allclose(ref, tuned, atol=1e-2)
    assert reference._copy is None  # no second copy of the weights for adapters
