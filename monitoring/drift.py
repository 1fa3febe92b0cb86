"""The drift check: reference pairs vs a window of served pairs, to one JSON summary and an HTML report.

Signals per text column (prompt, response): four descriptor distributions (length, word count,
non-letter share, sentiment), text content (TF-IDF domain classifier) and sentence embeddings
(domain classifier on all-MiniLM-L6-v2 vectors). Each signal is a test with a p-value
(`significance`); Holm's correction over the window's signals holds the chance that a window of
unchanged traffic is called drifted to `alpha`, at 20 rows as at 5,000. The window is drifted
when any signal is significant at its corrected level, or, with `drift_share` set, when that
share of the signals is, or all content signals of one column are: a topic shift rarely moves
lengths or sentiment, so counting it only by share would hide the drift users care about most.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from .records import Record
from .safety_figures import safety_figures

INSUFFICIENT = "insufficient data"
DEFAULT_ALPHA = 0.05


@dataclass
class DriftOptions:
    alpha: float = DEFAULT_ALPHA
    """Chance that a window of unchanged traffic is called drifted (family-wise, over all signals)."""
    drift_share: float | None = None
    """Also require this share of significant signals (or a column's content signals all); None: any."""
    min_samples: int = 200
    """Fewer pairs than this on either side (never fewer than significance.MIN_ROWS): insufficient
    data, never drifted."""
    embeddings: bool = True
    embedding_sample: int = 500
    """Pairs per side embedded (a seeded sample); embedding 10k texts takes minutes on a CPU."""
    max_rows: int = 5_000
    """Pairs per side fed to the descriptor and content drift (a seeded sample beyond this; 0 = all).
    5,000 rows estimate a classifier's ROC AUC to about +-0.01 and a K-S/Wasserstein test far below
    our thresholds' noise; safety figures always use every row."""
    seed: int = 0
    encode: Callable[[list[str]], Any] | None = None
    """Texts to sentence embeddings (default: embeddings.encode); a benchmark passes a cache."""
    log: Callable[[str], None] = field(default=lambda _m: None)


@dataclass
class DriftResult:
    summary: dict[str, Any]
    run: Any = None
    """The TextDrift of the window (its Evidently Report is built only for the HTML page); None when
    the window was too small."""

    @property
    def drift_detected(self) -> bool:
        return bool(self.summary["drift_detected"])

    def write_html(self, path: Path) -> None:
        from .files import atomic_write

        if self.run is None:
            from .files import atomic_write_text

            atomic_write_text(path, _insufficient_html(self.summary))
            return
        atomic_write(path, lambda tmp: _save_html(self.run, self.summary, tmp))


def _save_html(run, summary: dict, tmp: Path) -> None:
    # Evidently picks the format by extension; write to an .html name inside the temp sibling.
    html = tmp.with_name(tmp.name + ".html")
    levels = {name: s["threshold"] for name, s in summary["signals"].items() if s.get("threshold") is not None}
    try:
        run.save_html(html, levels)
        page = html.read_text(encoding="utf-8")
        head, sep, rest = page.partition("<body>")
        tmp.write_text(head + sep + summary_html(summary) + rest if sep else summary_html(summary) + page,
                       encoding="utf-8")
    finally:
        html.unlink(missing_ok=True)


def summary_html(summary: dict) -> str:
    """Our verdict and every signal (embeddings and safety included, which Evidently's page lacks)."""
    from html import escape

    def fmt(value: Any) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else escape(str(value))

    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{fmt(s['score'])}</td><td>{fmt(s.get('pValue'))}</td>"
        f"<td>{fmt(s['threshold'])}</td><td>{'yes' if s['drifted'] else 'no'}</td>"
        f"<td>{escape(str(s['method']))}</td></tr>"
        for name, s in sorted(summary["signals"].items())
    )
    safety = summary.get("safety") or {}
    verdict = "DRIFT DETECTED" if summary["drift_detected"] else "no drift"
    return (
        '<section id="kubetune-summary" style="font-family:sans-serif;margin:1em">'
        f"<h1>kubetune drift check: {verdict}</h1><p>{escape(summary.get('message', ''))}</p>"
        f"<p>samples: reference {summary['samples']['reference']}, current {summary['samples']['current']}; "
        f"false-alarm level alpha {fmt(summary['thresholds']['alpha'])} over {len(summary['signals'])} signals "
        f"(Holm); drift share {fmt(summary['drift_share'])}"
        + (f" (required {fmt(summary['thresholds']['driftShare'])})" if summary['thresholds'].get('driftShare') is not None else "")
        + "</p><p>A signal drifts when its p-value is at most its level. Evidently's panels below use "
        "the same levels; its text-content panels train their own classifier, so their verdicts may differ.</p>"
        "<table border=1 cellpadding=4><tr><th>signal</th><th>score</th><th>p-value</th><th>level</th>"
        f"<th>drifted</th><th>method</th></tr>{rows}</table>"
        f"<p>safety: flagged {fmt(safety.get('flagRatio'))}, PII leaks {fmt(safety.get('piiLeakRatio'))}, "
        f"refusals {fmt(safety.get('refusalRatio'))} ({escape(str(safety.get('flagSource')))})</p></section>"
    )


def _insufficient_html(summary: dict) -> str:
    s = summary["samples"]
    return (
        "<!doctype html><title>kubetune drift: insufficient data</title>"
        f"<h1>Insufficient data</h1><p>reference {s['reference']}, current {s['current']}; "
        f"at least {summary['thresholds']['minSamples']} needed on each side. Drift was not evaluated.</p>"
    )


def _sample(records: Sequence[Record], n: int, seed: int) -> list[Record]:
    if len(records) <= n:
        return list(records)
    return random.Random(seed).sample(list(records), n)


def _columns(reference: Sequence[Record], current: Sequence[Record]) -> list[str]:
    columns = ["prompt"]
    if any(r.response for r in reference) and any(r.response for r in current):
        columns.append("response")
    return columns


def compare(reference: Sequence[Record], current: Sequence[Record], options: DriftOptions | None = None) -> DriftResult:
    """Drift and safety figures of `current` against `reference`."""
    from .significance import MIN_ROWS, holm

    options = options or DriftOptions()
    started = time.perf_counter()
    min_rows = max(options.min_samples, MIN_ROWS)
    summary: dict[str, Any] = {
        "status": "ok",
        "drift_detected": False,
        "drift_share": None,
        "signals": {},
        "samples": {"reference": len(reference), "current": len(current)},
        "sampled": None,
        "thresholds": {"alpha": options.alpha, "driftShare": options.drift_share, "minSamples": min_rows},
        "safety": safety_figures(current).to_json(),
        "checkedTime": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if min(len(reference), len(current)) < min_rows:
        summary["status"] = "insufficient_data"
        summary["message"] = (
            f"{INSUFFICIENT}: reference {len(reference)}, current {len(current)}, "
            f"need at least {min_rows} on each side; drift not evaluated"
        )
        return DriftResult(summary)

    import pandas as pd

    from .descriptors import sentiment_rows
    from .evidently_adapter import TextDrift, embedding_drift

    limit = options.max_rows if options.max_rows > 0 else max(len(reference), len(current))
    ref = _sample(reference, limit, options.seed)
    cur = _sample(current, limit, options.seed + 1)
    summary["sampled"] = {"reference": len(ref), "current": len(cur)}
    columns = _columns(ref, cur)
    ref_df = pd.DataFrame({"prompt": [r.prompt for r in ref], "response": [r.response for r in ref]})
    cur_df = pd.DataFrame({"prompt": [r.prompt for r in cur], "response": [r.response for r in cur]})
    options.log(f"descriptor and text-content drift on {len(ref)} + {len(cur)} rows ({', '.join(columns)})")
    run = TextDrift(ref_df, cur_df, columns, seed=options.seed)
    signals = run.signals()
    notes = list(run.notes)
    summary["sampling"] = {
        "descriptors": dict(summary["sampled"]),
        "content": dict(summary["sampled"]),
        "sentiment": {"reference": len(sentiment_rows(len(ref))), "current": len(sentiment_rows(len(cur)))},
    }

    if options.embeddings:
        if options.encode is None:
            from .embeddings import encode
        else:
            encode = options.encode

        ref_e = _sample(ref, options.embedding_sample, options.seed + 2)
        cur_e = _sample(cur, options.embedding_sample, options.seed + 3)
        for i, col in enumerate(columns):
            options.log(f"embedding {len(ref_e)} + {len(cur_e)} {col}s")
            ref_vec = encode([getattr(r, col) for r in ref_e])
            cur_vec = encode([getattr(r, col) for r in cur_e])
            signals.append(embedding_drift(f"{col}.embedding", ref_vec, cur_vec, seed=options.seed + 10 + i))
        summary["sampling"]["embedding"] = {"reference": len(ref_e), "current": len(cur_e)}

    verdicts = holm({s.name: s.p_value for s in signals if s.p_value is not None}, options.alpha)
    signals = [s.judged(verdicts[s.name].level, verdicts[s.name].rejected) if s.name in verdicts else s
               for s in signals]
    scored = [s for s in signals if s.p_value is not None]
    drifted = [s for s in scored if s.drifted]
    share = len(drifted) / len(scored) if scored else 0.0
    by_name = {s.name: s for s in signals}
    topic_shift = []
    for col in columns:
        content = [by_name[n] for n in (f"{col}.content", f"{col}.embedding") if n in by_name]
        content = [s for s in content if s.p_value is not None]
        if content and all(s.drifted for s in content):
            topic_shift.append(col)
    if options.drift_share is None:
        detected = bool(drifted)
    else:
        detected = bool(drifted) and (share >= options.drift_share or bool(topic_shift))
    reasons = []
    if detected:
        strongest = sorted(drifted, key=lambda s: s.p_value)[:3]
        reasons.append(f"{len(drifted)} of {len(scored)} signals significant at alpha {options.alpha} (Holm): "
                       + ", ".join(f"{s.name} p={s.p_value:.2g}" for s in strongest))
        if options.drift_share is not None and share >= options.drift_share:
            reasons.append(f"share {share:.2f} >= {options.drift_share}")
        for col in topic_shift:
            names = [n for n in (f"{col}.content", f"{col}.embedding") if n in by_name]
            reasons.append(f"{col} content drifted ({' and '.join(names)})")
    elif drifted:
        reasons.append(f"{len(drifted)} of {len(scored)} signals significant, below the required share "
                       f"{options.drift_share} and no column's content signals all drifted: not drift")
    else:
        smallest = min(scored, key=lambda s: s.p_value) if scored else None
        reasons.append(f"no drift: none of {len(scored)} signals significant at alpha {options.alpha} (Holm)"
                       + (f"; smallest p-value {smallest.p_value:.2g} ({smallest.name}, level "
                          f"{smallest.threshold:.2g})" if smallest else ""))
    summary.update(
        drift_detected=detected,
        drift_share=round(share, 4),
        signals={s.name: s.to_json() for s in signals},
        message="; ".join(reasons),
        seconds=round(time.perf_counter() - started, 2),
    )
    if notes:
        summary["notes"] = notes
    return DriftResult(summary, run)
