"""Text metrics, gates and validation loss: pure functions checked against known values."""

from __future__ import annotations

import math

import pytest

from kubetune.api.finetunejob import Gate
from kubetune.trainer.evaluation import exact_match, lcs_length, normalize, rouge_l, validation_loss
from kubetune.trainer.gates import all_passed, describe, evaluate_gates, gates_to_wire


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("Paris.", "paris", True),
        ("  The   Answer is 42!", "answer is 42", True),
        ("Paris, France", "Paris", False),
        ("", "", True),
        ("yes", "no", False),
    ],
)
def test_exact_match_normalises_case_punctuation_and_articles(pred, ref, expected):
    assert exact_match(pred, ref) is expected


def test_normalize_is_idempotent():
    text = "The Quick, brown FOX!"
    assert normalize(text) == "quick brown fox"
    assert normalize(normalize(text)) == normalize(text)


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        # normalised: "cat sat on mat" vs "cat is on mat": LCS 3, P=R=3/4
        ("the cat sat on the mat", "the cat is on the mat", 0.75),
        # "police killed gunman" vs "police kill gunman": LCS 2 (police, gunman), P=R=2/3
        ("police killed the gunman", "police kill the gunman", 2 / 3),
        # pred 2 words, ref 4 words, LCS 2: P=1, R=0.5, F=2/3
        ("quick fox", "quick brown lazy fox", 2 / 3),
        ("completely different", "nothing shared here", 0.0),
        ("", "something", 0.0),
        ("", "", 1.0),
    ],
)
def test_rouge_l_f1_on_known_pairs(pred, ref, expected):
    assert rouge_l(pred, ref) == pytest.approx(expected)


def test_lcs_is_symmetric_and_correct():
    a, b = list("ABCBDAB"), list("BDCABA")
    assert lcs_length(a, b) == lcs_length(b, a) == 4


@pytest.mark.parametrize(
    "operator, threshold, value, passed",
    [
        ("<", 2.0, 1.5, True),
        ("<", 2.0, 2.0, False),
        ("<=", 2.0, 2.0, True),
        ("<=", 2.0, 2.5, False),
        (">", 0.5, 0.6, True),
        (">", 0.5, 0.5, False),
        (">=", 0.5, 0.5, True),
        (">=", 0.5, 0.4, False),
    ],
)
def test_each_gate_operator(operator, threshold, value, passed):
    (result,) = evaluate_gates([Gate(metric="rougeL", operator=operator, threshold=threshold)], {"rougeL": value})
    assert result.passed is passed
    assert result.value == value


def test_missing_or_nan_metric_fails_its_gate_with_no_value():
    gates = [
        Gate(metric="exactMatch", operator=">=", threshold=0.1),
        Gate(metric="perplexity", operator="<", threshold=10),
        Gate(metric="evalLoss", operator="<", threshold=10),
    ]
    results = evaluate_gates(gates, {"perplexity": float("nan"), "evalLoss": 1.0})
    assert [(r.passed, r.value) for r in results] == [(False, None), (False, None), (True, 1.0)]
    assert not all_passed(results)
    wire = gates_to_wire(results)
    assert wire[0] == {"metric": "exactMatch", "operator": ">=", "threshold": 0.1, "value": None, "passed": False}
    assert "missing" in describe(results[0]) and "FAILED" in describe(results[0])


def test_no_gates_pass_vacuously():
    assert evaluate_gates(None, {}) == []
    assert all_passed([])


def test_validation_loss_equals_hand_computation(lora_model, validation):
    """Mean over label tokens (not over batches) of -log p(next token)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for sample in validation:
            ids = torch.tensor([sample.input_ids])
            logprobs = torch.log_softmax(lora_model(input_ids=ids).logits[0].double(), dim=-1)
            for t in range(1, len(sample.input_ids)):
                if sample.labels[t] != -100:
                    total -= logprobs[t - 1, sample.labels[t]].item()
                    count += 1
    expected = total / count

    # Batches of unequal size with padding must give the same token mean.
    loss, ppl = validation_loss(lora_model, [validation[:3], validation[3:]], pad_token_id=3)
    assert loss == pytest.approx(expected, rel=1e-4)
    assert ppl == pytest.approx(math.exp(expected), rel=1e-4)
    loss_one_batch, _ = validation_loss(lora_model, [validation])
    assert loss_one_batch == pytest.approx(expected, rel=1e-4)


def test_validation_loss_without_label_tokens_is_an_error(lora_model, validation):
    from types import SimpleNamespace

    no_labels = [SimpleNamespace(input_ids=s.input_ids, labels=[-100] * len(s.labels)) for s in validation]
    with pytest.raises(ValueError, match="no label tokens"):
        validation_loss(lora_model, [no_labels])
