"""Dataset preparation: from the spec's sources to tokenised train/validation samples and a report.

The stages run in a fixed order so every count in the report means one thing:
load (bad rows skipped and counted per file:line) -> convert to conversations (format and column
mapping) -> clean (unicode NFC, whitespace; empty rows dropped) -> deduplicate (exact, then near)
-> redact PII -> tokenise with the chat template (over-long rows dropped) -> seeded stratified
split -> mix sources by weight (training split) -> balance classes (training split).

Validation is split off before mixing and balancing, so it never holds resampled copies of
training rows. Everything is seeded by `spec.hyperparameters.seed`: the same spec and data give
the same samples and the same `digest`.

Public interface (the training loop and evaluation/export rely on it): `SftSample`,
`PreferenceSample`, `PreparedData`, `prepare`, `summarise`, `DataError`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .data_errors import DataError

__all__ = ["DataError", "PreferenceSample", "PreparedData", "SftSample", "prepare", "summarise"]

REFERENCE_ROWS = 1000
"""Rows of the training split kept as the drift reference (contracts.md: reference.jsonl)."""
EVAL_PROMPTS = 100
"""Validation rows offered to evaluation as generation prompts."""


@dataclass
class SftSample:
    """One tokenised training example (supervised fine-tuning).

    `labels` is aligned with `input_ids` (not shifted: the Hugging Face convention, the model or
    the loss shifts by one). A label of -100 carries no loss: prompt and system tokens (unless
    `preprocessing.trainOnPrompt`), chat-template scaffolding between turns, padding.
    """

    input_ids: list[int]
    labels: list[int]
    weight: float = 1.0
    """Class weight (imbalance strategy classWeights: inverse class frequency, mean 1), else 1.0."""


@dataclass
class PreferenceSample:
    """One preference pair (dpo/orpo). `chosen_ids`/`rejected_ids` are the response tokens only,
    ending with the template's end-of-turn/eos token; the full sequence is prompt_ids + *_ids."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class PreparedData:
    """The output of `prepare`."""

    train: list[SftSample] | list[PreferenceSample]
    """Training samples in a seeded shuffled order (after mixing and balancing)."""
    validation: list[SftSample] | list[PreferenceSample]
    """Held-out samples (never resampled); may be empty when validationSplit is 0."""
    report: dict
    """The dataset report, JSON-serialisable (the pipeline writes it as dataset_report.json)."""
    reference: list[dict]
    """Up to 1000 {"prompt": str, "response": str} rows of the training split for drift
    monitoring (contracts.md: reference.jsonl). Chat prompts are flattened as `role: content`
    lines joined by newlines, the way the gateway logs chat requests."""
    eval_prompts: list[dict]
    """Up to 100 {"prompt": str, "reference": str, "messages": [...]} rows of the validation split:
    `prompt` is the last user message, `messages` the whole conversation before the answer (for
    multi-turn generation with the chat template), `reference` the expected answer."""
    digest: str
    """"sha256:..." over the prepared token streams (train then validation), stable across runs."""
    chat_template: str | None = None
    """The chat template used for tokenising (the spec's, else the tokenizer's); None for text."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Room for later additions without changing the constructor. `train_origins`: the
    `file:line` each training sample came from, aligned with `train`."""


def prepare(spec, tokenizer, *, base_dir: Path | None = None, log: Callable[[str], None] = print) -> PreparedData:
    """Prepare the spec's datasets for training with `tokenizer`.

    `spec` is a `kubetune.api.FineTuneJobSpec`; `base_dir` resolves relative dataset paths (the
    directory of the job file; default: the working directory). `log` receives progress lines.
    Raises `DataError` (before any training) on bad input, with a message naming the file, the
    line or the field and what to change.
    """
    from . import data_balance, data_clean, data_formats, data_report, data_sources, data_tokenize

    pre = spec.preprocessing
    seed = spec.hyperparameters.seed
    objective = spec.objective.type
    data_formats.check_objective(spec)
    template = data_tokenize.resolve_chat_template(spec, tokenizer)
    report = data_report.new_report(spec)

    # 1. load and convert, per source
    examples: list = []
    for source in spec.datasets:
        loaded = data_sources.load_source(source, base_dir=base_dir, seed=seed, log=log)
        converted = data_formats.convert_rows(source, loaded, label_field=data_balance.label_field(spec, source))
        data_sources.check_bad_rows(source, loaded, converted.bad, pre.max_bad_rows_fraction)
        data_report.add_source(report, source, loaded, converted)
        bad = loaded.bad + converted.bad
        for problem in bad[: data_sources.BAD_ROWS_LOGGED]:
            log(f"skipped {problem}")
        if len(bad) > data_sources.BAD_ROWS_LOGGED:
            log(f"... and {len(bad) - data_sources.BAD_ROWS_LOGGED} more malformed rows in {loaded.path}")
        examples.extend(converted.examples)
        log(f"dataset {source.name}: {len(converted.examples)} rows from {loaded.path} ({len(bad)} malformed, skipped)")
    if not examples:
        raise DataError("no usable rows in spec.datasets: every source is empty or malformed")

    # 2. clean, dedup, redact
    examples, empty = data_clean.clean(examples)
    report["dropped"]["empty"] = empty
    examples, exact, near = data_clean.deduplicate(examples, pre.dedup, seed=seed)
    report["duplicates"].update(exact=exact, near=near)
    report["dropped"]["duplicateExact"], report["dropped"]["duplicateNear"] = exact, near
    if pre.pii_redaction:
        examples, counts, rows = data_clean.redact_pii(examples)
        report["redactions"].update(byKind=counts, rows=rows, total=sum(counts.values()))

    # 3. tokenise
    result = data_tokenize.tokenise_all(
        examples, tokenizer, template=template, max_seq_length=pre.max_seq_length,
        train_on_prompt=pre.train_on_prompt, objective=objective,
    )
    tokenised = result.items
    report["dropped"]["tooLong"] += result.too_long
    report["dropped"]["templateError"] += len(result.template_errors)
    for problem in result.template_errors[:data_sources.BAD_ROWS_LOGGED]:
        log(f"skipped {problem}")
    if not tokenised:
        raise DataError(
            f"no rows left after cleaning, deduplication and the {pre.max_seq_length}-token limit "
            "(preprocessing.maxSeqLength): raise the limit or check the data"
        )

    # 4. split, mix, balance
    train, validation = data_balance.stratified_split(tokenised, pre.validation_split, seed=seed)
    report["classBalance"] = data_balance.class_counts_report(spec, train)
    train, mix = data_balance.mix_sources(train, spec.datasets, seed=seed)
    report["mix"] = mix
    train, weights, undersampled = data_balance.balance(train, spec, seed=seed)
    report["dropped"]["undersampled"] = undersampled
    data_balance.finish_class_report(report["classBalance"], train, weights)
    random.Random(seed).shuffle(train)

    samples_train = [t.sample for t in train]
    samples_validation = [t.sample for t in validation]
    digest = token_digest(samples_train, samples_validation)
    data_report.finish(report, spec, samples_train, samples_validation, digest)
    reference = data_report.reference_rows(train, seed=seed, limit=REFERENCE_ROWS)
    eval_prompts = data_report.eval_prompt_rows(validation, limit=EVAL_PROMPTS)
    log(summarise(report))
    return PreparedData(
        train=samples_train,
        validation=samples_validation,
        report=report,
        reference=reference,
        eval_prompts=eval_prompts,
        digest=digest,
        chat_template=template,
        extras={"train_origins": [t.example.origin for t in train]},
    )


def token_digest(train: list, validation: list) -> str:
    """sha256 over every sample's token ids, labels and weights, in order."""
    h = hashlib.sha256()
    for split_name, samples in (("train", train), ("validation", validation)):
        h.update(split_name.encode())
        for s in samples:
            if isinstance(s, SftSample):
                parts = (s.input_ids, s.labels, [repr(float(s.weight))])
            else:
                parts = (s.prompt_ids, s.chosen_ids, s.rejected_ids)
            for part in parts:
                h.update(",".join(map(str, part)).encode())
                h.update(b";")
            h.update(b"\n")
    return "sha256:" + h.hexdigest()


def summarise(report: dict) -> str:
    """A short human summary of a dataset report (printed by `kubetune prepare` and training)."""
    from .data_report import summarise as _summarise

    return _summarise(report)
