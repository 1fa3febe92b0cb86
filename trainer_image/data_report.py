"""The dataset report (dataset_report.json), its human summary, and the rows handed to
evaluation (eval prompts) and monitoring (the drift reference)."""

from __future__ import annotations

import math
import random

from .data_prepare import SftSample

DROP_REASONS = ("badRow", "empty", "duplicateExact", "duplicateNear", "templateError", "tooLong", "undersampled")


def new_report(spec) -> dict:
    pre = spec.preprocessing
    return {
        "objective": spec.objective.type,
        "seed": spec.hyperparameters.seed,
        "sources": [],
        "rowsIn": 0,
        "dropped": {reason: 0 for reason in DROP_REASONS},
        "badRowExamples": [],
        "duplicates": {"exact": 0, "near": 0, "mode": pre.dedup},
        "redactions": {"byKind": {}, "rows": 0, "total": 0, "enabled": pre.pii_redaction},
        "classBalance": None,
        "mix": {},
        "split": {"train": 0, "validation": 0, "validationSplit": pre.validation_split},
        "tokens": {},
        "packing": {"enabled": pre.packing, "maxSeqLength": pre.max_seq_length},
        "trainOnPrompt": pre.train_on_prompt,
    }


def add_source(report: dict, source, loaded, converted) -> None:
    bad = loaded.bad + converted.bad
    report["sources"].append({
        "name": source.name,
        "uri": source.uri,
        "path": loaded.path,
        "format": source.format,
        "rowsRead": loaded.rows_read,
        "rowsUsed": len(converted.examples),
        "badRows": len(bad),
    })
    report["rowsIn"] += loaded.rows_read
    report["dropped"]["badRow"] += len(bad)
    room = 20 - len(report["badRowExamples"])
    report["badRowExamples"] += [str(b) for b in bad[: max(0, room)]]


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of sorted values (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_stats(samples: list) -> dict:
    lengths = sorted(_length(s) for s in samples)
    loss_tokens = sum(_loss_tokens(s) for s in samples)
    return {
        "samples": len(lengths),
        "tokens": sum(lengths),
        "lossTokens": loss_tokens,
        "mean": round(sum(lengths) / len(lengths), 2) if lengths else 0,
        "p50": percentile(lengths, 50),
        "p90": percentile(lengths, 90),
        "p99": percentile(lengths, 99),
        "max": lengths[-1] if lengths else 0,
    }


def _length(s) -> int:
    if isinstance(s, SftSample):
        return len(s.input_ids)
    return len(s.prompt_ids) + max(len(s.chosen_ids), len(s.rejected_ids))


def _loss_tokens(s) -> int:
    if isinstance(s, SftSample):
        # the first token is never predicted (shifted labels), matching data_collate
        return sum(1 for lab in s.labels[1:] if lab != -100)
    return len(s.chosen_ids) + len(s.rejected_ids)


def finish(report: dict, spec, train: list, validation: list, digest: str) -> None:
    from .data_collate import pack, packing_efficiency

    pre = spec.preprocessing
    report["split"]["train"], report["split"]["validation"] = len(train), len(validation)
    report["train"], report["validation"] = len(train), len(validation)
    report["tokens"] = {"train": length_stats(train), "validation": length_stats(validation)}
    sft = [s for s in train if isinstance(s, SftSample)]
    if sft and pre.packing:
        rows = pack(sft, pre.max_seq_length, seed=spec.hyperparameters.seed)
        report["packing"].update(sequences=len(rows), efficiency=round(packing_efficiency(rows, pre.max_seq_length), 4))
    elif train:
        report["packing"].update(sequences=len(train), efficiency=round(_padded_efficiency(train, spec.hyperparameters.batch_size), 4))
    report["digest"] = digest


def _padded_efficiency(samples: list, batch_size: int) -> float:
    """Share of non-pad tokens when batches in data order are padded to their longest row."""
    lengths = [_length(s) for s in samples]
    padded = sum(max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))
    return sum(lengths) / padded if padded else 0.0


def flatten(messages: list[dict]) -> str:
    """`role: content` lines joined by newlines, as the gateway logs chat requests."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _prompt_response(ex) -> tuple[list[dict], str]:
    if ex.kind == "text":
        return [], ex.text
    if ex.kind == "preference":
        return ex.messages, ex.chosen
    last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
    return ex.messages[:last], ex.messages[last]["content"]


def reference_rows(train: list, *, seed: int, limit: int) -> list[dict]:
    """Distinct training rows as {"prompt", "response"} for drift monitoring (seeded sample)."""
    seen, unique = set(), []
    for item in train:
        if id(item.example) not in seen:
            seen.add(id(item.example))
            unique.append(item.example)
    if len(unique) > limit:
        unique = [unique[i] for i in sorted(random.Random(f"{seed}:reference").sample(range(len(unique)), limit))]
    rows = []
    for ex in unique:
        messages, response = _prompt_response(ex)
        rows.append({"prompt": flatten(messages) if messages else response, "response": response if messages else ""})
    return rows


def eval_prompt_rows(validation: list, *, limit: int) -> list[dict]:
    """The first validation conversations as generation prompts with their reference answers."""
    rows = []
    for item in validation:
        ex = item.example
        if ex.kind == "text":
            continue
        messages, response = _prompt_response(ex)
        users = [m["content"] for m in messages if m["role"] == "user"]
        rows.append({"prompt": users[-1] if users else flatten(messages), "reference": response, "messages": messages})
        if len(rows) >= limit:
            break
    return rows


def summarise(report: dict) -> str:
    """A few lines a person reads in the training log or after `kubetune prepare`."""
    dropped = {k: v for k, v in report["dropped"].items() if v}
    lines = [
        f"dataset: {report['rowsIn']} rows in from {len(report['sources'])} source(s); "
        f"{report['split']['train']} train, {report['split']['validation']} validation",
        "dropped: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped else "none"),
    ]
    red = report["redactions"]
    if red.get("total"):
        kinds = ", ".join(f"{k} {v}" for k, v in red["byKind"].items())
        lines.append(f"PII redacted: {red['total']} in {red['rows']} rows ({kinds})")
    cb = report.get("classBalance")
    if cb:
        line = f"classes ({cb.get('labelField') or 'label'}, {cb['strategy']}): {_counts(cb.get('before', {}))} -> {_counts(cb.get('after', {}))}"
        if cb.get("weights"):
            line += "; weights " + ", ".join(f"{k} {v:.3g}" for k, v in cb["weights"].items())
        lines.append(line)
    if len(report.get("mix", {})) > 1:
        lines.append("mix: " + ", ".join(f"{k} {v['mixedRows']} ({v['share']:.0%})" for k, v in report["mix"].items()))
    tok = report.get("tokens", {}).get("train")
    if tok:
        lines.append(
            f"tokens/sample: p50 {tok['p50']}, p90 {tok['p90']}, p99 {tok['p99']}, max {tok['max']}; "
            f"{tok['tokens']} tokens, {tok['lossTokens']} with loss"
        )
    pk = report.get("packing", {})
    if "efficiency" in pk:
        how = f"packed into {pk['sequences']} sequences of {pk['maxSeqLength']}" if pk["enabled"] else "unpacked"
        lines.append(f"padding: {how}, {pk['efficiency']:.1%} real tokens")
    if report.get("badRowExamples"):
        lines.append("first malformed rows: " + "; ".join(report["badRowExamples"][:3]))
    lines.append(f"digest: {report.get('digest', '-')}")
    return "\n".join(lines)


def _counts(counts: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "}"


MAX_STATUS_SOURCES = 32


def status_summary(report: dict) -> dict:
    """The report's headline figures as FineTuneJob.status.dataset (wire keys)."""
    redactions = report.get("redactions") or {}
    summary = {
        "rowsIn": int(report.get("rowsIn", 0)),
        "train": int(report.get("train", 0)),
        "validation": int(report.get("validation", 0)),
        "dropped": {k: int(v) for k, v in (report.get("dropped") or {}).items()},
        "redactedRows": int(redactions.get("rows", 0)),
        "redactions": {k: int(v) for k, v in (redactions.get("byKind") or {}).items()},
        "trainTokens": ((report.get("tokens") or {}).get("train") or {}).get("tokens"),
        "sources": [{"name": s["name"], "rowsRead": int(s.get("rowsRead", 0)), "rowsUsed": int(s.get("rowsUsed", 0)),
                     "badRows": int(s.get("badRows", 0))} for s in (report.get("sources") or [])[:MAX_STATUS_SOURCES]],
        "digest": report.get("digest"),
    }
    return {k: v for k, v in summary.items() if v is not None}


def summary_line(summary: dict) -> str:
    """One line for a console: rows in, kept, and what was dropped or redacted."""
    dropped = ", ".join(f"{reason} {n}" for reason, n in (summary.get("dropped") or {}).items() if n)
    text = (f"{summary.get('rowsIn', 0)} rows in, {summary.get('train', 0)} train, "
            f"{summary.get('validation', 0)} validation; dropped: {dropped or 'none'}")
    if summary.get("redactedRows"):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted((summary.get("redactions") or {}).items()))
        text += f"; PII redacted in {summary['redactedRows']} rows ({kinds})"
    return text
