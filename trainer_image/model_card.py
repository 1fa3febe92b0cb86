"""The artifact's README.md: a model card a reviewer can read before approving a deployment.

Pure: rendered from the manifest, the evaluation report and the dataset report.
"""

from __future__ import annotations

from typing import Any

_METRIC_ROWS = [
    ("evalLoss", "baseEvalLoss", "Validation loss (lower is better)"),
    ("perplexity", "basePerplexity", "Perplexity (lower is better)"),
    ("exactMatch", "baseExactMatch", "Exact match (higher is better)"),
    ("rougeL", "baseRougeL", "ROUGE-L F1 (higher is better)"),
    ("safetyFlagRatio", None, "Safety probe: share of unsafe answers (lower is better)"),
    ("refusalRatio", None, "Safety probe: share of refusals"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _data_summary(report: dict | None) -> list[str]:
    """Lines from data preparation's report (kubetune.trainer.data_report's keys)."""
    if not report:
        return ["No dataset report was recorded."]
    lines = []
    for src in report.get("sources") or []:
        lines.append(
            f"- Source `{src.get('name')}` ({src.get('format')}): {_fmt(src.get('rowsUsed'))} of "
            f"{_fmt(src.get('rowsRead'))} rows used, {_fmt(src.get('badRows', 0))} malformed"
        )
    if "rowsIn" in report:
        lines.append(f"- Rows read: {_fmt(report['rowsIn'])}")
    split = report.get("split") or {}
    if split:
        lines.append(f"- Training rows: {_fmt(split.get('train'))}, validation rows: {_fmt(split.get('validation'))}")
    dup = report.get("duplicates")
    if isinstance(dup, dict):
        lines.append(f"- Duplicates removed: {_fmt(dup.get('exact', 0))} exact, {_fmt(dup.get('near', 0))} near")
    elif dup is not None:
        lines.append(f"- Duplicates removed: {_fmt(dup)}")
    dropped = {k: v for k, v in (report.get("dropped") or {}).items() if v}
    if dropped:
        lines.append("- Dropped by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
    red = report.get("redactions") or {}
    by_kind = red.get("byKind") if isinstance(red.get("byKind"), dict) else None
    if by_kind:
        lines.append("- PII redactions: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())))
    tokens = (report.get("tokens") or {}).get("train")
    if isinstance(tokens, dict) and tokens:
        lines.append("- Training tokens per sample: " + ", ".join(f"{k} {_fmt(v)}" for k, v in tokens.items()))
    return lines or ["See dataset_report.json."]


def render_model_card(manifest: dict, evaluation: dict | None, dataset_report: dict | None = None) -> str:
    """Markdown: base, method, data, metrics base vs tuned, gates, intended use, limitations."""
    config = manifest.get("config") or {}
    method = (config.get("method") or {}).get("type", "lora")
    objective = (config.get("objective") or {}).get("type", "sft")
    artifact = manifest.get("artifact") or {}
    job = manifest.get("job") or {}
    metrics = manifest.get("metrics") or {}
    base = manifest.get("baseModel") or {}
    title = job.get("name") or "kubetune model"

    out = [f"# {title}", ""]
    out.append(
        f"Fine-tuned from `{base.get('uri')}` with **{method}** ({objective}) by kubetune "
        f"{manifest.get('kubetune', '')}. Artifact kind: **{artifact.get('kind')}** in `{artifact.get('path')}/`."
    )
    out += ["", "## Provenance", ""]
    out.append(f"- Base model: `{base.get('uri')}`" + (f" at revision `{base['revision']}`" if base.get("revision") else ""))
    out.append(f"- Base weights digest: `{base.get('digest')}`")
    out.append(f"- Artifact digest: `{artifact.get('digest')}`")
    if artifact.get("loraRank"):
        out.append(f"- LoRA rank {artifact['loraRank']} on {', '.join(artifact.get('targetModules') or [])}")
    out.append(f"- Dataset digest: `{manifest.get('datasetDigest')}`")
    names = [d.get("name") for d in config.get("datasets") or []]
    if names:
        out.append(f"- Datasets: {', '.join(str(n) for n in names)}")
    versions = manifest.get("versions") or {}
    out.append("- Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    out.append(f"- Created: {manifest.get('createdTime')}")

    out += ["", "## Training data", ""] + _data_summary(dataset_report)

    out += ["", "## Evaluation", "", "| Metric | Base | Tuned |", "|---|---|---|"]
    shown = False
    for tuned_key, base_key, label in _METRIC_ROWS:
        if tuned_key in metrics or (base_key and base_key in metrics):
            out.append(f"| {label} | {_fmt(metrics.get(base_key)) if base_key else '–'} | {_fmt(metrics.get(tuned_key))} |")
            shown = True
    if not shown:
        out.append("| (no metrics were computed) | – | – |")
    if "evalLossDelta" in metrics:
        out += ["", f"Validation loss change (tuned minus base): {_fmt(metrics['evalLossDelta'])}."]

    gates = manifest.get("gates") or []
    out += ["", "## Deployment gates", ""]
    if gates:
        out += ["| Gate | Value | Result |", "|---|---|---|"]
        for g in gates:
            result = "passed" if g.get("passed") else "**failed**"
            out.append(f"| {g['metric']} {g['operator']} {_fmt(g['threshold'])} | {_fmt(g.get('value'))} | {result} |")
        verdict = "All gates passed: the artifact may be deployed." if manifest.get("gatesPassed") else (
            "At least one gate failed: a ModelDeployment will not serve this artifact."
        )
        out += ["", verdict]
    else:
        out.append("No gates were set; nothing stops a deployment. Consider gating on evalLoss and safetyFlagRatio.")

    samples = (evaluation or {}).get("samples") or []
    if samples:
        out += ["", "### Sample answers", "", "| Prompt | Reference | Base | Tuned |", "|---|---|---|---|"]
        for s in samples[:5]:
            out.append(
                f"| {_escape(s.get('prompt', ''))[:120]} | {_escape(s.get('reference') or '')[:120]} | "
                f"{_escape(s.get('base', '–'))[:120]} | {_escape(s.get('tuned', '–'))[:120]} |"
            )

    out += [
        "",
        "## Intended use",
        "",
        f"Answering requests like those in the training data, served through kubetune (vLLM with "
        f"{'LoRA adapters' if artifact.get('kind') == 'adapter' else 'the merged weights'}) behind the gateway's "
        "authentication, logging and safety scoring.",
        "",
        "## Limitations",
        "",
        "- The model inherits the base model's knowledge cut-off, biases and failure modes.",
        "- Evaluation covers the held-out split and the prompts listed above only; it is not a benchmark of general ability.",
        "- The safety probe is a small tripwire set, not a red-team exercise; serve behind the gateway's safety scorer.",
        "- Drift from the training traffic (reference.jsonl) is monitored after deployment; retrain when it grows.",
        "",
    ]
    return "\n".join(out)
