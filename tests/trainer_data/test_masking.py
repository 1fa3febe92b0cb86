"""Which tokens carry loss, and the checks that fail before training."""

from __future__ import annotations

import copy

import pytest

from kubetune.trainer.data_prepare import DataError, prepare

from .helpers import make_spec, write_jsonl

QUIET = dict(log=lambda _: None)
MULTI_TURN = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question?"},
        {"role": "assistant", "content": "Second answer."},
    ]
}


def labelled_runs(tokenizer, sample) -> list[str]:
    """The text of each maximal run of tokens that carry loss."""
    runs, current = [], []
    for tok, lab in zip(sample.input_ids, sample.labels):
        if lab != -100:
            assert lab == tok
            current.append(tok)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_multi_turn_masks_every_non_assistant_turn(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [MULTI_TURN])
    data = prepare(make_spec([{"name": "c", "uri": str(path), "format": "chat"}]), tokenizer, **QUIET)
    (sample,) = data.train
    assert labelled_runs(tokenizer, sample) == ["First answer.<|im_end|>", "Second answer.<|im_end|>"]
    masked = tokenizer.decode([t for t, lab in zip(sample.input_ids, sample.labels) if lab == -100])
    for prompt_text in ("You are terse.", "First question?", "Second question?", "<|im_start|>assistant\n"):
        assert prompt_text in masked


def test_train_on_prompt_puts_loss_on_every_token(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [MULTI_TURN])
    spec = make_spec([{"name": "c", "uri": str(path), "format": "chat"}], trainOnPrompt=True)
    (sample,) = prepare(spec, tokenizer, **QUIET).train
    assert sample.labels == sample.input_ids


def test_trailing_user_turn_is_dropped(tmp_path, tokenizer):
    row = copy.deepcopy(MULTI_TURN)
    row["messages"].append({"role": "user", "content": "Unanswered?"})
    path = write_jsonl(tmp_path / "c.jsonl", [row])
    (sample,) = prepare(make_spec([{"name": "c", "uri": str(path), "format": "chat"}]), tokenizer, **QUIET).train
    assert "Unanswered" not in tokenizer.decode(sample.input_ids)


def test_over_long_rows_are_dropped_and_counted(tmp_path, tokenizer):
    rows = [{"instruction": "short", "output": "ok"}, {"instruction": "long", "output": "word " * 40}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    data = prepare(make_spec([{"name": "a", "uri": str(path), "format": "alpaca"}], maxSeqLength=32), tokenizer, **QUIET)
    assert data.report["dropped"]["tooLong"] == 1 and len(data.train) == 1
    assert all(len(s.input_ids) <= 32 for s in data.train)


@pytest.fixture
def no_template_tokenizer(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    return bare


def test_missing_chat_template_fails_with_what_to_set(tmp_path, no_template_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}])
    spec = make_spec([{"name": "a", "uri": str(path), "format": "alpaca"}])
    with pytest.raises(DataError) as err:
        prepare(spec, no_template_tokenizer, **QUIET)
    assert "has no chat template" in str(err.value)
    assert "spec.preprocessing.chatTemplate" in str(err.value)


def test_spec_chat_template_is_used_when_tokenizer_has_none(tmp_path, no_template_tokenizer):
    template = (
        "{% for m in messages %}{{ '### ' + m['role'] + ': ' + m['content'] + eos_token + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### assistant: ' }}{% endif %}"
    )
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "answer"}])
    spec = make_spec([{"name": "a", "uri": str(path), "format": "alpaca"}], chatTemplate=template)
    data = prepare(spec, no_template_tokenizer, **QUIET)
    (sample,) = data.train
    assert data.chat_template == template
    assert no_template_tokenizer.decode(sample.input_ids).startswith("### user: q<|im_end|>")
    # byte-level BPE merges the space of "assistant: " into " answer": the token that straddles
    # the boundary carries loss, because the model must produce it
    assert labelled_runs(no_template_tokenizer, sample) == [" answer<|im_end|>"]


def test_text_format_needs_no_chat_template(tmp_path, no_template_tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain text"}])
    data = prepare(make_spec([{"name": "t", "uri": str(path), "format": "text"}]), no_template_tokenizer, **QUIET)
    assert len(data.train) == 1


@pytest.mark.parametrize(
    "objective, fmt, advice",
    [("dpo", "alpaca", "set objective.type to sft"), ("sft", "preference", "set objective.type to dpo or orpo")],
)
def test_objective_format_mismatch_says_what_to_change(tmp_path, tokenizer, objective, fmt, advice):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "output": "a"}])
    spec = make_spec([{"name": "d", "uri": str(path), "format": fmt}], objective=objective, rules=False)
    with pytest.raises(DataError) as err:
        prepare(spec, tokenizer, **QUIET)
    assert f"objective.type is {objective}" in str(err.value) and advice in str(err.value)


def test_eval_prompts_keep_the_conversation_before_the_answer(tmp_path, tokenizer):
    rows = [copy.deepcopy(MULTI_TURN) for _ in range(2)]
    rows[1]["messages"][1]["content"] = "Another first question?"
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    spec = make_spec([{"name": "c", "uri": str(path), "format": "chat"}], validationSplit=0.5)
    data = prepare(spec, tokenizer, **QUIET)
    (row,) = data.eval_prompts
    assert row["prompt"] == "Second question?" and row["reference"] == "Second answer."
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user"]


def test_rows_the_template_refuses_are_counted(tmp_path, tokenizer):
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    rows = [MULTI_TURN] + [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(3)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    logged: list[str] = []
    spec = make_spec([{"name": "c", "uri": str(path), "format": "chat"}], chatTemplate=template)
    data = prepare(spec, tokenizer, log=logged.append)
    assert data.report["dropped"]["templateError"] == 1 and len(data.train) == 3
    assert any(f"{path}:1: chat template refused the conversation: no system role" in line for line in logged)
