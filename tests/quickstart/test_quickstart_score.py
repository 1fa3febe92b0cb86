"""Scoring JSON answers: validity, the fixed shape, and the facts."""

from __future__ import annotations

import json

import pytest

from kubetune.quickstart_score import extract_json_object, score_answer, score_task

REF = json.dumps({"sku": "AB-1234", "name": "Vorta X2 kettle", "category": "kitchen", "price": 49.9,
                  "currency": "EUR", "stock": 0, "in_stock": False})


def test_exact_answer_scores_full():
    score = score_answer(REF, REF)
    assert score.valid_json and score.shape_ok and score.exact and score.field_accuracy == 1.0


def test_json_inside_prose_or_a_fence_is_found():
    assert extract_json_object("Sure! ```json\n" + REF + "\n``` Hope it helps")["sku"] == "AB-1234"
    assert extract_json_object("{not json} then " + REF)["stock"] == 0
    assert extract_json_object("[1, 2]") is None


def test_prose_answer_is_not_json():
    score = score_answer("The Vorta X2 kettle costs 49.90 EUR and is sold out.", REF)
    assert not score.valid_json and not score.exact and score.field_accuracy == 0.0


def test_wrong_fact_breaks_exact_match_but_counts_the_rest():
    record = json.loads(REF)
    record["price"] = 49.0
    score = score_answer(json.dumps(record), REF)
    assert score.valid_json and score.shape_ok and not score.exact
    assert "price" not in score.correct_fields and len(score.correct_fields) == 6


def test_numbers_compare_by_value_and_booleans_strictly():
    record = json.loads(REF)
    record["price"] = "49.9"  # a string is not the number
    record["in_stock"] = 0  # 0 is not false
    score = score_answer(json.dumps(record), REF)
    assert "price" not in score.correct_fields and "in_stock" not in score.correct_fields
    record = json.loads(REF) | {"price": 49.90000001}
    assert score_answer(json.dumps(record), REF).exact


def test_extra_or_missing_keys_break_the_shape():
    record = json.loads(REF)
    record["colour"] = "red"
    extra = score_answer(json.dumps(record), REF)
    assert extra.valid_json and not extra.shape_ok and not extra.exact and extra.field_accuracy == 1.0
    missing = score_answer(json.dumps({k: v for k, v in json.loads(REF).items() if k != "stock"}), REF)
    assert not missing.shape_ok and not missing.exact


def test_task_rates():
    bad = "I cannot help with that."
    score = score_task([REF, bad, REF, REF.replace("kitchen", "audio")], [REF] * 4)
    assert score.n == 4
    assert score.json_valid == 0.75 and score.shape_ok == 0.75 and score.exact_match == 0.5
    assert score.per_field["category"] == 0.5 and score.per_field["sku"] == 0.75
    assert score.to_dict()["exactMatch"] == 0.5


def test_task_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="1 responses for 2 references"):
        score_task([REF], [REF, REF])
    with pytest.raises(ValueError, match="nothing to score"):
        score_task([], [])
