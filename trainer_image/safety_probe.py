"""The safety probe: red-team prompts answered by the tuned model and scored for unsafe content.

Fine-tuning on benign data is known to erode a model's refusals; this catches the obvious
cases before deployment. The shipped prompt set (`safety_probes.jsonl`, written for kubetune)
covers weapons, self-harm, hate, malware, drugs, PII leaks, fraud and jailbreak framing. The
scorer is pluggable (`kubetune.common.safety`); the default runs offline.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from kubetune.common.safety import SafetyScorer, is_refusal

BUILTIN = "builtin"
BUILTIN_FILE = "safety_probes.jsonl"


class ProbeSetError(ValueError):
    """A prompt set file that cannot be read; the message names file and line."""


def _parse_lines(lines: Sequence[str], source: str) -> list[dict]:
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeSetError(f"{source}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ProbeSetError(f"{source}:{number}: each line needs a non-empty string field 'prompt'")
        rows.append({"id": row.get("id", f"{Path(source).name}-{number}"), "category": row.get("category"), "prompt": row["prompt"]})
    if not rows:
        raise ProbeSetError(f"{source}: the prompt set is empty")
    return rows


def load_probe_prompts(prompt_set: str = BUILTIN) -> list[dict]:
    """Rows `{id, category, prompt}` of the builtin set or of a JSON lines file at a URI."""
    if prompt_set == BUILTIN:
        text = resources.files("kubetune.trainer").joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
        return _parse_lines(text.splitlines(), BUILTIN_FILE)
    from .model_init import local_file

    path = local_file(prompt_set, "spec.evaluation.safety.promptSet")
    if not path.is_file():
        raise ProbeSetError(f"evaluation.safety.promptSet: {prompt_set!r} ({path}) is not a file")
    return _parse_lines(path.read_text(encoding="utf-8").splitlines(), str(path))


def score_responses(rows: Sequence[dict], responses: Sequence[str], scorer: SafetyScorer) -> dict:
    """The probe report: flag and refusal ratios, counts by category, and every scored answer."""
    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} probe prompts but {len(responses)} responses")
    details, flagged_by_category = [], Counter()
    for row, response in zip(rows, responses):
        s = scorer.score(row["prompt"], response)
        refused = is_refusal(response)
        details.append(
            {
                "id": row["id"],
                "category": row.get("category"),
                "prompt": row["prompt"],
                "response": response,
                "flagged": s.flagged,
                "score": s.score,
                "categories": dict(s.categories),
                "refusal": refused,
            }
        )
        if s.flagged:
            flagged_by_category.update(s.categories.keys() or ["unspecified"])
    n = len(details)
    flagged = sum(d["flagged"] for d in details)
    refusals = sum(d["refusal"] for d in details)
    return {
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "prompts": n,
        "flagged": flagged,
        "refusals": refusals,
        "flagRatio": flagged / n if n else 0.0,
        "refusalRatio": refusals / n if n else 0.0,
        "flaggedByCategory": dict(flagged_by_category),
        "details": details,
    }


def run_safety_probe(
    model,
    tokenizer,
    *,
    prompt_set: str = BUILTIN,
    scorer: SafetyScorer,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    log: Callable[[str], None] = print,
) -> dict:
    """Answer the probe prompts greedily with `model` and score every answer."""
    from .evaluation import generate_answers

    rows = load_probe_prompts(prompt_set)
    log(f"safety probe: {len(rows)} prompts from {prompt_set}, scorer {getattr(scorer, 'name', '?')}")
    responses = generate_answers(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, batch_size)
    report = score_responses(rows, responses, scorer)
    report["promptSet"] = prompt_set
    log(
        f"safety probe: {report['flagged']}/{report['prompts']} flagged "
        f"({report['flagRatio']:.1%}), {report['refusalRatio']:.1%} refused"
    )
    return report
