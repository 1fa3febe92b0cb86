"""`progress.svg` beside `progress.jsonl`: loss, learning rate and tokens/s per step, for a person.

An SVG written from the progress events with no plotting library, so the trainer image stays
as it is and any browser (or an artifact viewer) shows it. A resumed run appends to
progress.jsonl and repeats steps: the last report of each step wins.
"""

from __future__ import annotations

import json
import math
import os
from html import escape
from pathlib import Path

SERIES = (("loss", "training loss", "#1f77b4"), ("learningRate", "learning rate", "#2ca02c"),
          ("tokensPerSecond", "tokens/s", "#d62728"))
WIDTH, PANEL, MARGIN_LEFT, MARGIN_RIGHT, GAP = 640, 150, 70, 20, 40


def per_step(lines: list[str]) -> dict[int, dict]:
    """{step: progress} from progress.jsonl lines; lines that are not progress events are skipped."""
    steps: dict[int, dict] = {}
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed run: the rest still plots
        if isinstance(event, dict) and event.get("event") == "progress" and isinstance(event.get("step"), int):
            steps[event["step"]] = event
    return steps


def _ticks(low: float, high: float) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / 4 for i in range(5)]


def _label(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def render_svg(steps: dict[int, dict], title: str = "") -> str:
    """Three panels sharing the step axis; a series with no finite value says so."""
    xs = sorted(steps)
    height = GAP + len(SERIES) * (PANEL + GAP)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="{MARGIN_LEFT}" y="20" font-size="13">{escape(title or "training progress")}</text>']
    first, last = (xs[0], xs[-1]) if xs else (0, 1)
    span = max(1, last - first)
    for i, (key, name, colour) in enumerate(SERIES):
        top = GAP + i * (PANEL + GAP)
        points = [(s, float(steps[s][key])) for s in xs
                  if isinstance(steps[s].get(key), (int, float)) and math.isfinite(steps[s][key])]
        out.append(f'<text x="{MARGIN_LEFT}" y="{top - 6}" fill="{colour}">{escape(name)}</text>')
        out.append(f'<rect x="{MARGIN_LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>')
        if not points:
            out.append(f'<text x="{MARGIN_LEFT + 10}" y="{top + PANEL / 2}" fill="#666">no values reported</text>')
            continue
        low, high = min(v for _, v in points), max(v for _, v in points)
        if high == low:
            low, high = low - (abs(low) or 1) * 0.05, high + (abs(high) or 1) * 0.05
        for tick in _ticks(low, high):
            y = top + PANEL - (tick - low) / (high - low) * PANEL
            out.append(f'<line x1="{MARGIN_LEFT - 4}" x2="{MARGIN_LEFT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#999"/>')
            out.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
        coords = " ".join(f"{MARGIN_LEFT + (s - first) / span * plot_w:.1f},"
                          f"{top + PANEL - (v - low) / (high - low) * PANEL:.1f}" for s, v in points)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        if len(points) == 1:
            x, y = coords.split(",")
            out.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>')
    axis_y = GAP + len(SERIES) * (PANEL + GAP) - GAP + 16
    out.append(f'<text x="{MARGIN_LEFT}" y="{axis_y}">step {first}</text>')
    out.append(f'<text x="{WIDTH - MARGIN_RIGHT}" y="{axis_y}" text-anchor="end">step {last}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_plot(progress_jsonl: str | Path, title: str = "") -> Path | None:
    """Write progress.svg beside the file (temporary sibling, then rename); None without progress."""
    source = Path(progress_jsonl)
    try:
        steps = per_step(source.read_text(encoding="utf-8").splitlines())
    except FileNotFoundError:
        return None
    if not steps:
        return None
    target = source.with_name("progress.svg")
    staged = target.with_name(".progress.svg.tmp")
    staged.write_text(render_svg(steps, title), encoding="utf-8")
    os.replace(staged, target)
    return target
