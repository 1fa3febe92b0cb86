"""Packing and collation: no attention or loss across samples, exact loss-token counts."""

from __future__ import annotations

import random

import pytest
import torch

from kubetune.trainer.data_collate import collate_preference, collate_sft, pack, packing_efficiency
from kubetune.trainer.data_prepare import PreferenceSample, SftSample

PAD = 3


def random_samples(lengths, *, vocab=300, seed=0, weight=1.0, prompt=2):
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(5, vocab) for _ in range(n)]
        labels = [-100] * min(prompt, n) + ids[prompt:]
        out.append(SftSample(ids, labels, weight))
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
    return model.eval()


def test_packed_logits_equal_each_sample_alone(tiny_model):
    samples = random_samples([7, 13, 5, 20, 9, 3], vocab=tiny_model.config.vocab_size)
    rows = pack(samples, 32)
    assert len(rows) < len(samples)  # something was actually packed together
    batch = collate_sft(rows, pad_id=PAD, packing=True)
    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=batch["position_ids"]).logits
        # negative control: the same rows with a plain padding mask attend across samples
        leaky = tiny_model(input_ids=batch["input_ids"], attention_mask=(batch["input_ids"] != PAD).long()).logits
        worst, leak = 0.0, 0.0
        for b, row in enumerate(rows):
            start = 0
            for length in row.lengths:
                alone = tiny_model(input_ids=batch["input_ids"][b : b + 1, start : start + length]).logits[0]
                worst = max(worst, (alone - packed[b, start : start + length]).abs().max().item())
                leak = max(leak, (alone - leaky[b, start : start + length]).abs().max().item())
                start += length
    assert torch.isfinite(packed).all()
    assert worst < 1e-5
    assert leak > 1e-3


def test_pack_keeps_every_sample_whole_within_max_len():
    samples = random_samples([30, 1, 17, 16, 15, 2, 32, 8, 8, 8], seed=1)
    rows = pack(samples, 32, seed=5)
    assert all(len(r) <= 32 for r in rows)
    packed = []
    for r in rows:
        start = 0
        for length in r.lengths:
            packed.append(tuple(r.input_ids[start : start + length]))
            assert r.position_ids[start : start + length] == list(range(length))
            start += length
    assert sorted(packed) == sorted(tuple(s.input_ids) for s in samples)
    assert sum(len(r) for r in rows) == sum(len(s.input_ids) for s in samples)
    assert len(rows) == 5  # 137 tokens: best-fit decreasing reaches the minimum of 5 rows
    assert [r.lengths for r in pack(samples, 32, seed=5)] == [r.lengths for r in rows]
    assert packing_efficiency(rows, 32) == pytest.approx(137 / (5 * 32))
    with pytest.raises(ValueError, match="more than the packing length"):
        pack(random_samples([40]), 32)


def test_loss_tokens_and_weights_packed():
    a = SftSample([10, 11, 12, 13], [-100, -100, 12, 13], 2.0)
    b = SftSample([20, 21, 22], [20, 21, 22], 0.5)  # text sample: its first label is dropped
    rows = pack([a, b], 16)
    batch = collate_sft(rows, pad_id=PAD, packing=True)
    (row,) = rows
    labels = batch["labels"][0].tolist()
    weights = batch["loss_weights"][0].tolist()
    first_a = row.input_ids.index(10)
    first_b = row.input_ids.index(20)
    assert labels[first_a] == -100 and labels[first_b] == -100
    assert int(batch["num_loss_tokens"]) == 4 == sum(lab != -100 for lab in labels)
    assert weights[first_a + 2 : first_a + 4] == [2.0, 2.0]
    assert weights[first_b + 1 : first_b + 3] == [0.5, 0.5]
    assert sum(weights) == pytest.approx(2 * 2.0 + 2 * 0.5)
    assert batch["position_ids"][0, first_b : first_b + 3].tolist() == [0, 1, 2]
    mask = batch["attention_mask"][0, 0]
    assert mask.shape == (7, 7) and not mask[first_b, first_a] and not mask[first_a + 3, first_b]


def test_unpacked_batch_pads_and_counts():
    samples = [SftSample([5, 6, 7], [-100, 6, 7], 1.5), SftSample([8, 9], [8, 9], 1.0)]
    batch = collate_sft(samples, pad_id=PAD, packing=False)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, PAD]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["loss_weights"].tolist() == [[0.0, 1.5, 1.5], [0.0, 1.0, 0.0]]
    assert int(batch["num_loss_tokens"]) == 3


def test_loss_normalised_by_tokens_matches_one_big_batch(tiny_model):
    """Summing per-token losses over micro-batches and dividing by the total num_loss_tokens
    gives the loss of the whole batch at once, however the samples are split."""
    import torch.nn.functional as F

    samples = random_samples([6, 11, 4, 9], vocab=tiny_model.config.vocab_size, seed=3)

    def summed_loss(batch):
        logits = tiny_model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="none")
        return (losses * batch["loss_weights"][:, 1:].flatten()).sum()

    with torch.no_grad():
        whole = collate_sft(samples, pad_id=PAD, packing=False)
        expected = summed_loss(whole) / whole["num_loss_tokens"]
        micro = [collate_sft(samples[:1], pad_id=PAD, packing=False), collate_sft(pack(samples[1:], 32), pad_id=PAD, packing=True)]
        total_tokens = sum(int(m["num_loss_tokens"]) for m in micro)
        got = sum(summed_loss(m) for m in micro) / total_tokens
    assert total_tokens == int(whole["num_loss_tokens"])
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_collate_preference_labels_only_responses():
    batch = collate_preference(
        [PreferenceSample([1, 2, 3], [4, 5], [6]), PreferenceSample([7], [8], [9, 10, 11])], pad_id=PAD
    )
    assert batch["chosen_input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, PAD, PAD, PAD]]
    assert batch["chosen_labels"].tolist() == [[-100, -100, -100, 4, 5], [-100, 8, -100, -100, -100]]
    assert batch["rejected_input_ids"].tolist() == [[1, 2, 3, 6], [7, 9, 10, 11]]
    assert batch["rejected_labels"].tolist() == [[-100, -100, -100, 6], [-100, 9, 10, 11]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
