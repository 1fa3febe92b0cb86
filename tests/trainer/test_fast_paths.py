"""The loop's speed paths compute the same thing as the plain ones.

- answers-only LM head (`objectives.sft(head=...)`): same loss and gradients as full logits;
- the vectorised block-causal mask, built in collation or on the device from segment ids:
  the same mask as one causal block per sample;
- GPU mixed precision for adapters: chosen only where it applies (the CUDA path itself is
  measured by bench/trainer_mfu.py on a GPU; this machine has none);
- bench/trainer_mfu.py's FLOPs accounting against a real model's parameter count.
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from kubetune.trainer import loop, methods, objectives
from kubetune.trainer.data_collate import block_causal_mask, collate_sft, pack
from kubetune.trainer.data_prepare import SftSample


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)


def _samples(seed: int = 0) -> list[SftSample]:
    rng = random.Random(seed)
    out = []
    for n in (9, 14, 5, 20, 11, 7, 3):
        ids = [rng.randrange(3, 200) for _ in range(n)]
        out.append(SftSample(ids, [-100] * (n // 2) + ids[n // 2:], weight=rng.choice([0.5, 1.0, 2.0])))
    return out


def _loss_and_grads(model, batch, head):
    model.zero_grad(set_to_none=True)
    parts = objectives.sft(model, batch, head=head)
    parts.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return parts, grads


@pytest.mark.parametrize("packing", [True, False])
def test_answers_only_head_matches_full_logits(tiny_model, packing):
    samples = _samples()
    batch = collate_sft(pack(samples, 32) if packing else samples[:4], pad_id=0, packing=packing)
    full, full_grads = _loss_and_grads(tiny_model, batch, head=None)
    head = objectives.output_head(tiny_model)
    assert head is tiny_model.lm_head
    fast, fast_grads = _loss_and_grads(tiny_model, batch, head=head)

    assert float(fast.count) == float(full.count) == float((batch["labels"] != -100).sum())
    assert torch.allclose(fast.total, full.total, rtol=1e-5, atol=1e-5)
    assert full_grads.keys() == fast_grads.keys()
    for name, grad in full_grads.items():
        assert torch.allclose(fast_grads[name], grad, rtol=1e-4, atol=1e-6), name
    # the hook is gone afterwards: a plain forward returns logits for every position again
    out = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_head_runs_only_on_positions_whose_next_label_counts(tiny_model):
    batch = collate_sft(pack(_samples(1), 32), pad_id=0, packing=True)
    seen = []
    handle = tiny_model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    try:
        objectives.sft(tiny_model, batch, head=tiny_model.lm_head)
    finally:
        handle.remove()
    assert seen == [torch.Size([int((batch["labels"] != -100).sum()), tiny_model.config.hidden_size])]


def test_output_head_of_peft_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert objectives.output_head(peft_model) is base.lm_head


def _per_sample_mask(rows, width):
    """The reference: one lower-triangular block per sample, pads attend to themselves."""
    mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    for b, row in enumerate(rows):
        start = 0
        for n in row.lengths:
            mask[b, 0, start:start + n, start:start + n] = torch.ones((n, n), dtype=torch.bool).tril()
            start += n
        for i in range(start, width):
            mask[b, 0, i, i] = True
    return mask


def test_block_causal_mask_matches_per_sample_blocks():
    rows = pack(_samples(2) + _samples(3), 24)
    batch = collate_sft(rows, pad_id=0, packing=True)
    width = batch["input_ids"].size(1)
    assert torch.equal(batch["attention_mask"], _per_sample_mask(rows, width))

    deferred = collate_sft(rows, pad_id=0, packing=True, build_mask=False)
    assert "attention_mask" not in deferred and deferred["segment_ids"].shape == (len(rows), width)
    on_device = loop.to_device(deferred, "cpu")
    assert "segment_ids" not in on_device
    assert torch.equal(on_device["attention_mask"], batch["attention_mask"])
    assert loop.to_device(collate_sft(rows, pad_id=0, packing=True, build_mask=False), "cpu", mask=False)[
        "attention_mask"] is None


def test_block_causal_mask_keeps_samples_apart():
    segments = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = block_causal_mask(segments)[0, 0]
    assert mask[1, 0] and not mask[2, 1] and mask[4, 2] and not mask[5, 4] and mask[5, 5]


def test_adapter_autocast_only_for_adapters_on_a_bf16_gpu(make_job):
    lora = make_job({"baseModel": {"dtype": "bfloat16"}}).spec
    assert methods.adapter_autocast_dtype(lora, "cpu") is None
    assert methods.adapter_autocast_dtype(lora, "cuda:0") == torch.bfloat16
    full = make_job({"baseModel": {"dtype": "bfloat16"}, "method": {"type": "full"}}).spec
    assert methods.adapter_autocast_dtype(full, "cuda:0") is None
    fp16 = make_job({"baseModel": {"dtype": "float16"}}).spec
    assert methods.adapter_autocast_dtype(fp16, "cuda:0") is None


def test_keep_adapter_inputs_in_base_dtype(tiny_model_dir, make_job):
    from transformers import AutoModelForCausalLM

    spec = make_job().spec
    model = methods.apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), spec)
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and all(m.cast_input_dtype_enabled for m in layers)
    assert methods.keep_adapter_inputs_in_base_dtype(model) == len(layers)
    assert not any(m.cast_input_dtype_enabled for m in layers)


# ---------------------------------------------------------------- bench/trainer_mfu.py


@pytest.fixture(scope="module")
def mfu(repo_root):
    spec = importlib.util.spec_from_file_location("trainer_mfu", repo_root / "bench" / "trainer_mfu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mfu_base_parameters_match_a_real_llama(mfu):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=96, vocab_size=300)
    model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    total = sum(p.numel() for p in model.parameters())
    assert mfu.base_parameters(shape) == total - shape["vocab_size"] * shape["hidden_size"]


def test_mfu_flops_formula(mfu):
    lora = mfu.flops_per_token(base_params=1000, lora_params=10, layers=2, hidden=8, context=16, frozen_base=True)
    full = mfu.flops_per_token(base_params=1000, lora_params=0, layers=2, hidden=8, context=16, frozen_base=False)
    assert lora == 4 * 1000 + 6 * 10 + 12 * 2 * 8 * 16
    assert full == 6 * 1000 + 12 * 2 * 8 * 16


def test_mfu_sample_lengths_cover_the_budget(mfu):
    lengths = mfu.sample_lengths(10_000, 512, seed=3)
    assert sum(lengths) >= 10_000 and all(16 <= n <= 512 for n in lengths)
    assert lengths == mfu.sample_lengths(10_000, 512, seed=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_mfu_without_cuda_says_so(mfu, capsys):
    assert mfu.main(["--method", "lora"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_options_from_env():
    from kubetune.trainer.errors import TrainerConfigError

    assert loop.gpu_options_from_env({}) == {"attention": "sdpa", "compile_blocks": False}
    assert loop.gpu_options_from_env({"KUBETUNE_ATTENTION": "flex_attention", "KUBETUNE_COMPILE_BLOCKS": "1"}) == {
        "attention": "flex_attention", "compile_blocks": True}
    with pytest.raises(TrainerConfigError, match="KUBETUNE_ATTENTION"):
        loop.gpu_options_from_env({"KUBETUNE_ATTENTION": "flash"})
    with pytest.raises(TrainerConfigError, match="KUBETUNE_COMPILE_BLOCKS"):
        loop.gpu_options_from_env({"KUBETUNE_COMPILE_BLOCKS": "yes please"})


def test_gpu_options_fall_back_on_cpu(make_job, sft_samples, tmp_path, caplog):
    """On CPU the loop trains with sdpa and no compile even when asked for the GPU options."""
    spec = make_job({"hyperparameters": {"maxSteps": 1}}).spec
    cfg = loop.LoopConfig(spec=spec, model_dir=spec.base_model.uri, train=sft_samples[:2],
                          checkpoint_dir=str(tmp_path / "ckpt"), pad_id=0, attention="flex_attention",
                          compile_blocks=True)
    with caplog.at_level("WARNING"):
        result = loop.train_loop(cfg)
    assert len(result.losses) == 1 and result.losses[0] > 0
    assert "GPUs only" in caplog.text
