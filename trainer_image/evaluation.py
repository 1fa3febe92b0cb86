"""Stage 5, evaluation: validation loss and perplexity, generation metrics, safety probe, gates.

Base and tuned model are measured the same way in the same run, so the report can say what
fine-tuning changed. For LoRA-family methods the base is the tuned model with its adapter
disabled (no second copy in memory); for full, freeze and hft the caller passes
`base_model_fn`, which loads the base model on demand.

The text metrics (`normalize`, `exact_match`, `rouge_l`) are pure and written here so the
trainer needs no evaluation library.
"""

from __future__ import annotations

import contextlib
import math
import re
import string
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from kubetune.api.finetunejob import ADAPTER_METHODS

from .gates import all_passed, describe, evaluate_gates, gates_to_wire

IGNORE_INDEX = -100

# ----------------------------------------------------------------------------- text metrics

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (SQuAD-style)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = text.translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> bool:
    """Equal after normalisation, so "Paris." matches "paris"."""
    return normalize(pred) == normalize(ref)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length; memory linear in the shorter sequence."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 over normalised word tokens (1.0 when both are empty)."""
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p and not r:
        return 1.0
    lcs = lcs_length(p, r) if p and r else 0
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- loss


def _field(sample: Any, name: str):
    return sample[name] if isinstance(sample, dict) else getattr(sample, name)


def collate_for_eval(samples: Sequence[Any], pad_token_id: int = 0) -> dict:
    """Right-pad samples with `input_ids`/`labels` (attributes or keys) into tensors."""
    import torch

    longest = max(len(_field(s, "input_ids")) for s in samples)
    ids = torch.full((len(samples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for i, s in enumerate(samples):
        seq, lab = list(_field(s, "input_ids")), list(_field(s, "labels"))
        if len(seq) != len(lab):
            raise ValueError(f"validation sample {i}: {len(seq)} input_ids but {len(lab)} labels")
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        import torch

        return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def validation_loss(model, batches: Iterable[Any], pad_token_id: int = 0) -> tuple[float, float]:
    """(mean loss per label token, perplexity) over all batches, without gradients.

    A batch is a list of samples with `input_ids` and `labels` (labels aligned with input_ids,
    -100 where no loss is taken, as transformers does) or an already collated dict of tensors
    (`input_ids`, `labels`, optionally `attention_mask`/`position_ids` for packed rows). The mean
    is over tokens, not batches, so it does not depend on how the data was batched.
    """
    import torch
    import torch.nn.functional as F

    device = _model_device(model)
    total, count = 0.0, 0
    with _eval_mode(model), torch.no_grad():
        for batch in batches:
            if not isinstance(batch, dict):
                if not len(batch):
                    continue
                batch = collate_for_eval(batch, pad_token_id)
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
            labels = batch["labels"].to(device)
            logits = model(**inputs).logits
            shift_logits = logits[:, :-1, :].float()
            shift_labels = labels[:, 1:]
            total += F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int((shift_labels != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("validation data has no label tokens: nothing to compute a loss on")
    mean = total / count
    return mean, math.exp(min(mean, 700.0))


# ----------------------------------------------------------------------------- generation


def chat_prompt(tokenizer, prompt: str | list[dict], system: str | None = None) -> str:
    """The prompt rendered with the tokenizer's chat template, ending where the answer starts.

    `prompt` is a user message, or a whole conversation (a list of `{"role", "content"}`) whose
    next assistant turn is wanted.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template: set spec.preprocessing.chatTemplate or use an instruct model"
        )
    if isinstance(prompt, str):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_answers(
    model, tokenizer, prompts: list[str] | list[list[dict]], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy answers to user prompts (or conversations) through the chat template, left-padded batches."""
    import torch

    if not prompts:
        return []
    device = _model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        with _eval_mode(model), torch.no_grad():
            for chunk in batched(prompts, batch_size):
                texts = [chat_prompt(tokenizer, p) for p in chunk]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                answers.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
    return answers


# ----------------------------------------------------------------------------- the job's evaluation


def _prompt_pairs(eval_prompts: Iterable[Any]) -> list[tuple[str, str | None, list[dict] | None]]:
    """(prompt, reference, conversation or None) from pairs, dicts (data preparation's
    `eval_prompts`, whose `messages` hold the whole conversation) or EvalPrompt objects."""
    pairs = []
    for p in eval_prompts or []:
        messages = None
        if isinstance(p, (tuple, list)):
            prompt, ref = p[0], (p[1] if len(p) > 1 else None)
        elif isinstance(p, dict):
            prompt, ref, messages = p["prompt"], p.get("reference"), p.get("messages") or None
        else:
            prompt, ref = p.prompt, getattr(p, "reference", None)
        pairs.append((prompt, ref, messages))
    return pairs


def _measure(model, tokenizer, *, validation, pairs, batch_size, max_new_tokens, want_loss, want_gen, log, who):
    metrics: dict[str, float] = {}
    answers: list[str] = []
    if want_loss and validation:
        t0 = time.monotonic()
        loss, ppl = validation_loss(model, batched(validation, batch_size), pad_token_id=tokenizer.pad_token_id or 0)
        metrics.update(evalLoss=loss, perplexity=ppl)
        log(f"evaluation: {who} validation loss {loss:.4f} (perplexity {ppl:.2f}) in {time.monotonic() - t0:.1f}s")
    if want_gen and pairs:
        t0 = time.monotonic()
        inputs = [messages or prompt for prompt, _, messages in pairs]
        answers = generate_answers(model, tokenizer, inputs, max_new_tokens, batch_size=batch_size)
        scored = [(a, r) for a, (_, r, _) in zip(answers, pairs) if r is not None]
        if scored:
            metrics["exactMatch"] = sum(exact_match(a, r) for a, r in scored) / len(scored)
            metrics["rougeL"] = sum(rouge_l(a, r) for a, r in scored) / len(scored)
        log(
            f"evaluation: {who} answered {len(answers)} prompts in {time.monotonic() - t0:.1f}s"
            + (f" (exact match {metrics['exactMatch']:.3f}, ROUGE-L {metrics['rougeL']:.3f})" if scored else "")
        )
    return metrics, answers


def load_prompt_file(uri: str) -> list[dict]:
    """`{"prompt", "reference"}` rows of evaluation.promptsUri; errors name the file and line."""
    import json
    from pathlib import Path

    from .model_init import local_file

    path = Path(local_file(uri, "spec.evaluation.promptsUri"))
    if not path.is_file():
        raise ValueError(f"evaluation.promptsUri: {uri!r} ({path}) is not a file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path}:{number}: each line needs a string field 'prompt' (and optionally 'reference')")
        ref = row.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise ValueError(f"{path}:{number}: 'reference' must be a string")
        rows.append({"prompt": row["prompt"], "reference": ref})
    return rows


def _spec_of(spec):
    return getattr(spec, "spec", spec)


def evaluate_job(
    spec,
    tokenizer,
    *,
    tuned_model,
    base_model_fn: Callable[[], Any] | None,
    validation: Sequence[Any],
    eval_prompts: Iterable[Any] | None,
    scorer=None,
    log: Callable[[str], None] = print,
) -> dict:
    """The evaluation report for a trained model (a dict, written as evaluation.json).

    `spec` is the FineTuneJobSpec (or the FineTuneJob). `validation` holds SftSample-like
    samples. Generation prompts are the spec's own (`evaluation.prompts` and the rows of
    `evaluation.promptsUri`) when it names any, else `eval_prompts`: (prompt, reference) pairs,
    dicts (data preparation's held-out rows) or EvalPrompt objects. For LoRA-family methods the base is
    measured with the adapter disabled; otherwise `base_model_fn()` loads it (None skips the
    base comparison, and base metrics are then absent). Metrics use the API's GateMetric names.
    """
    from .safety_probe import run_safety_probe

    spec = _spec_of(spec)
    ev = spec.evaluation
    gate_metrics = {g.metric for g in (ev.gates or [])}
    want_loss = bool({"loss", "perplexity"} & set(ev.metrics)) or bool(
        {"evalLoss", "perplexity", "evalLossDelta"} & gate_metrics
    )
    want_gen = bool({"exactMatch", "rougeL"} & set(ev.metrics)) or bool({"exactMatch", "rougeL"} & gate_metrics)
    own = list(ev.prompts or []) + (load_prompt_file(ev.prompts_uri) if ev.prompts_uri else [])
    pairs = _prompt_pairs(own or eval_prompts or [])
    batch_size = max(1, min(spec.hyperparameters.batch_size, 16))
    validation = list(validation or [])
    if want_loss and not validation:
        log("evaluation: no validation samples (preprocessing.validationSplit is 0?): loss metrics skipped")
    if want_gen and not pairs:
        log("evaluation: no evaluation prompts (evaluation.prompts / promptsUri): exactMatch and rougeL skipped")
    common = dict(
        validation=validation, pairs=pairs, batch_size=batch_size, max_new_tokens=ev.max_new_tokens,
        want_loss=want_loss, want_gen=want_gen, log=log,
    )

    tuned, tuned_answers = _measure(tuned_model, tokenizer, who="tuned", **common)
    base: dict[str, float] = {}
    base_answers: list[str] = []
    if spec.method.type in ADAPTER_METHODS and hasattr(tuned_model, "disable_adapter"):
        with tuned_model.disable_adapter():
            base, base_answers = _measure(tuned_model, tokenizer, who="base", **common)
    elif base_model_fn is not None and (want_loss or want_gen):
        base_model = base_model_fn()
        try:
            base, base_answers = _measure(base_model, tokenizer, who="base", **common)
        finally:
            del base_model
    else:
        log("evaluation: no base model to compare with: base metrics skipped")

    metrics: dict[str, float] = dict(tuned)
    for name in ("evalLoss", "perplexity", "exactMatch", "rougeL"):
        if name in base:
            metrics["base" + name[0].upper() + name[1:]] = base[name]
    if "evalLoss" in tuned and "evalLoss" in base:
        metrics["evalLossDelta"] = tuned["evalLoss"] - base["evalLoss"]

    samples = []
    for i, (prompt, ref, _) in enumerate(pairs):
        row: dict[str, Any] = {"prompt": prompt, "reference": ref}
        if i < len(tuned_answers):
            row["tuned"] = tuned_answers[i]
            if ref is not None:
                row["exactMatch"] = exact_match(tuned_answers[i], ref)
                row["rougeL"] = rouge_l(tuned_answers[i], ref)
        if i < len(base_answers):
            row["base"] = base_answers[i]
            if ref is not None:
                row["baseExactMatch"] = exact_match(base_answers[i], ref)
                row["baseRougeL"] = rouge_l(base_answers[i], ref)
        samples.append(row)

    safety_report = None
    probe = ev.safety
    if (probe is not None and probe.enabled) or "safetyFlagRatio" in gate_metrics:
        from kubetune.common.safety import make_scorer

        if scorer is None:
            scorer = make_scorer(probe.scorer if probe else "offline", probe.endpoint if probe else None)
        safety_report = run_safety_probe(
            tuned_model,
            tokenizer,
            prompt_set=probe.prompt_set if probe else "builtin",
            scorer=scorer,
            max_new_tokens=min(ev.max_new_tokens, 96),
            batch_size=batch_size,
            log=log,
        )
        metrics["safetyFlagRatio"] = safety_report["flagRatio"]
        metrics["refusalRatio"] = safety_report["refusalRatio"]

    results = evaluate_gates(ev.gates, metrics)
    for r in results:
        log("gate " + describe(r))
    return {
        "metrics": metrics,
        "base": base,
        "tuned": tuned,
        "samples": samples,
        "safety": safety_report,
        "gates": gates_to_wire(results),
        "passed": all_passed(results),
        "createdTime": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
