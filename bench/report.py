"""out/bench/report.md and its plots, from the JSON files the benches wrote.

    .venv/bin/python bench/report.py [--dir out/bench]

Reads every `<bench>.json` in the folder (bench/results.py's format: `bench`, `machine`, the
figures), writes one section per bench with its table and, where the figures make one, a PNG:

    trainer_throughput   training loss and tokens/s per step, ours against each baseline
    operator_scale       CDF of create -> RayJob latency beside the one-create floor
    gateway_overhead     latency added by the gateway at each percentile
    drift_calibration    false-alarm and detection rate by window size
    canary_analysis      false-rollback and detection rate by requests per window

A bench whose file is absent is listed as not run; a JSON file without a `bench` key (an older
bench's output) is listed as skipped; a file that is not JSON is an error naming it. Plots use
matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ORDER = ("trainer_throughput", "operator_scale", "gateway_overhead", "engine_batching", "drift_throughput",
         "drift_calibration", "canary_analysis")


class ReportError(ValueError):
    """A file in the folder is not a bench result."""


def load(folder: Path) -> tuple[dict[str, dict], list[str]]:
    """({file stem: figures}, [files skipped, with why])."""
    found: dict[str, dict] = {}
    skipped: list[str] = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ReportError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict) or "bench" not in data:
            skipped.append(f"{path.name}: no 'bench' key (not written by bench/results.py)")
            continue
        found[path.stem] = data
    return found, skipped


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    staged = path.with_name(path.name + ".tmp.png")
    fig.savefig(staged, dpi=110, bbox_inches="tight")
    os.replace(staged, path)
    _plt().close(fig)
    return path.name


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


# ----------------------------------------------------------------------------- sections


def trainer(data: dict, png: Path) -> list[str]:
    results = data["results"]
    rows = [[name, f"{r['tokensPerSecond']:.1f}", f"{r['tokensPerCpuSecond'] or 0:.1f}", f"{r['peakRssMiB']:.0f}",
             f"{r['finalLoss']:.4f}", f"{100 * r.get('shareOfMatmulPeak', 0):.1f}%", _settings(r.get("settings"))]
            for name, r in results.items()]
    lines = [f"Model {data['model']}; {data['args'].get('steps')} steps of batch {data['args'].get('batch_size')}, "
             f"maxSeqLength {data['args'].get('max_seq_length')}; fp32 matmul peak measured in the run: "
             f"{data.get('matmulPeakFlops', 0) / 1e9:.1f} GFLOP/s.", ""]
    lines += _table(["run", "tokens/s", "tokens/CPU-s", "peak RSS MiB", "final loss", "share of matmul peak",
                     "settings"], rows)
    for base, ratio in (data.get("ratios") or {}).items():
        label = " (TRL's own defaults: a labelled second row, not equal settings)" if base == "trl-defaults" else ""
        lines.append("")
        lines.append(f"ours / {base}{label}: **{ratio['tokensPerSecond']:.2f}x** tokens/s, "
                     f"{ratio['tokensPerCpuSecond']:.2f}x tokens/CPU-s, {ratio['peakRss']:.2f}x peak RSS.")
    plt = _plt()
    fig, (loss_ax, speed_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        if r.get("losses"):
            loss_ax.plot(range(1, len(r["losses"]) + 1), r["losses"], marker="o", label=name)
        if r.get("stepTokensPerSecond"):
            speed_ax.plot(range(2, len(r["stepTokensPerSecond"]) + 2), r["stepTokensPerSecond"], marker="o", label=name)
    loss_ax.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    speed_ax.set(title="useful tokens/s per step (step 1 is warm-up)", xlabel="optimizer step", ylabel="tokens/s")
    loss_ax.legend()
    speed_ax.legend()
    lines += ["", f"![training loss and tokens/s per step]({_save(fig, png)})"]
    return lines


def _settings(s: dict | None) -> str:
    if not s:
        return "-"
    return (f"{s['weights']}, autocast {s['autocast']}, checkpointing {'on' if s['gradientCheckpointing'] else 'off'}, "
            f"packing {s['packing']}, {s['threads']} threads, {s['malloc']}")


def operator(data: dict, png: Path) -> list[str]:
    lines = [f"{data['jobs']} FineTuneJobs created at once ({data['client']} client); all Provisioning after "
             f"{data['allProvisioningSeconds']:.1f} s; operator peak RSS {data['operatorPeakRssMiB']:.0f} MB.", ""]
    lines += _table(["", "p50 ms", "p95 ms"], [
        ["create -> RayJob", f"{1e3 * data['p50']:.0f}", f"{1e3 * data['p95']:.0f}"],
        ["floor: one API create (not a peer)", f"{1e3 * data['floorP50']:.1f}", f"{1e3 * data['floorP95']:.1f}"]])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("createToRayJobSeconds", "create -> RayJob"), ("floorCreateSeconds", "floor: one API create")):
        values = sorted(data.get(key) or [])
        if values:
            ax.step([1e3 * v for v in values], [(i + 1) / len(values) for i in range(len(values))], where="post",
                    label=label)
    ax.set(xscale="log", xlabel="ms", ylabel="share of jobs", title="create -> RayJob latency, CDF")
    ax.legend()
    return lines + ["", f"![create -> RayJob latency CDF]({_save(fig, png)})"]


def gateway(data: dict, png: Path) -> list[str]:
    lines: list[str] = []
    g = data.get("gateway")
    if g:
        d, w = g["direct"], g["gateway"]
        lines += _table(["", "p50 ms", "p99 ms", "TTFT p50 ms", "req/s"], [
            [name, f"{1e3 * s['p50']:.2f}", f"{1e3 * s['p99']:.2f}", f"{1e3 * s['ttft50']:.2f}", f"{s['rps']:.1f}"]
            for name, s in (("direct to the engine", d), ("through the gateway", w))])
        lines += ["", f"added p50 {1e3 * g['addedP50Seconds']:.2f} ms (target <= 1 ms), throughput ratio "
                      f"{g['throughputRatio']:.3f} (target >= 0.95), gateway CPU per streamed request "
                      f"{1e3 * g['gatewayCpuPerRequestSeconds']:.2f} ms."]
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        qs = g["latencyByQuantile"]
        ax.plot([100 * q["q"] for q in qs], [1e3 * (q["gateway"] - q["direct"]) for q in qs], marker="o")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set(xlabel="percentile", ylabel="added ms", title="latency the gateway adds, by percentile")
        lines += ["", f"![gateway added latency]({_save(fig, png)})"]
    e = data.get("engine")
    if e:
        lines += ["", f"Local engine on {e['model']}: {e['engineTokensPerSecond']:.1f} tokens/s streamed against "
                      f"plain `model.generate` {e['plainTokensPerSecond']:.1f} (ratio {e['ratio']:.2f})."]
    return lines


def engine_batching(data: dict, png: Path) -> list[str]:
    a, b = data["alone"], data["batched"]
    return _table(["", "wall s", "CPU s", "tokens/s"], [
        ["one at a time (baseline)", f"{a['wallSeconds']:.1f}", f"{a['cpuSeconds']:.1f}",
         f"{data['tokens'] / a['wallSeconds']:.1f}"],
        ["one batch (engine)", f"{b['wallSeconds']:.1f}", f"{b['cpuSeconds']:.1f}",
         f"{data['tokens'] / b['wallSeconds']:.1f}"]]) + [
        "", f"{data['requests']} requests of at most {data['maxTokens']} tokens; identical answers: "
            f"{'yes' if data['identicalAnswers'] else 'NO'}."]


def drift_throughput(data: dict, png: Path) -> list[str]:
    rows = [[name, f"{r['seconds']:.2f}", f"{r['rows_per_s']:,.0f}", f"{r['cpu_seconds']:.2f}", f"{r['peak_rss_mb']:.0f}"]
            for name, r in data.items() if isinstance(r, dict) and "seconds" in r and "rows_per_s" in r]
    return [f"{data['rows']} + {data['rows']} rows."] + [""] + _table(
        ["run", "s", "rows/s", "CPU s", "peak RSS MB"], rows)


def drift_calibration(data: dict, png: Path) -> list[str]:
    results = data["results"]
    rows = []
    for r in results:
        b = r.get("baseline") or {}
        rows.append([r["rows"], f"{r['ours']['falseAlarmRate']:.3f}", _f(b.get("falseAlarmRate")),
                     f"{r['ours']['detectionRate']:.3f}", _f(b.get("detectionRate")), r["trials"]])
    lines = _table(["rows per window", "false alarms, ours", "false alarms, baseline", "detection, ours",
                    "detection, baseline", "windows"], rows)
    lines += ["", f"Goals: false alarms <= alpha ({data['alpha']}) at every size; detection >= 0.9 at 100 rows."]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [r["rows"] for r in results]
    for who, style in (("ours", "-"), ("baseline", "--")):
        if all(who in r for r in results):
            ax.plot(sizes, [r[who]["falseAlarmRate"] for r in results], style, marker="o", label=f"false alarms, {who}")
            ax.plot(sizes, [r[who]["detectionRate"] for r in results], style, marker="s", label=f"detection, {who}")
    ax.axhline(data["alpha"], color="grey", linewidth=0.5)
    ax.set(xscale="log", xlabel="rows per window", ylabel="rate", ylim=(-0.02, 1.02), title="drift check")
    ax.legend()
    return lines + ["", f"![drift false alarms and detections]({_save(fig, png)})"]


def canary(data: dict, png: Path) -> list[str]:
    results = data["results"]
    rows = [[r["requests"], r["scenario"], f"{r['ours']['rate']:.3f}", f"{r['marginOnly']['rate']:.3f}",
             r["meanWindowsOurs"]] for r in results]
    lines = _table(["requests per window", "scenario", "rollbacks, ours", "rollbacks, margin only",
                    "windows to decide"], rows)
    lines += ["", f"In the `same` rows every rollback is a false one: goal <= alpha ({data['alpha']})."]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    scenarios = sorted({r["scenario"] for r in results}, key=[r["scenario"] for r in results].index)
    for scenario in scenarios:
        cells = [r for r in results if r["scenario"] == scenario]
        ax.plot([c["requests"] for c in cells], [c["ours"]["rate"] for c in cells], marker="o",
                label=("false rollbacks" if scenario == "same" else scenario))
    ax.axhline(data["alpha"], color="grey", linewidth=0.5)
    ax.set(xscale="log", xlabel="requests per window", ylabel="rollback rate", ylim=(-0.02, 1.02),
           title="canary analysis (ours)")
    ax.legend(fontsize=8)
    return lines + ["", f"![canary rollbacks by window size]({_save(fig, png)})"]


SECTIONS: dict[str, tuple[str, Callable[[dict, Path], list[str]]]] = {  # bench -> (title, section(figures, png))
    "trainer_throughput": ("Trainer: LoRA SFT against transformers Trainer and TRL", trainer),
    "operator_scale": ("Operator: FineTuneJobs created at once", operator),
    "gateway_overhead": ("Gateway overhead and local engine tokens/s", gateway),
    "engine_batching": ("Local engine: batched against one at a time", engine_batching),
    "drift_throughput": ("Drift check throughput", drift_throughput),
    "drift_calibration": ("Drift calibration", drift_calibration),
    "canary_analysis": ("Canary analysis", canary),
}


def _machine_line(about: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in (about.get("versions") or {}).items())
    return (f"{about.get('cpu', '?')}, {about.get('cores', '?')} cores; load average {about.get('loadAverageBefore')} "
            f"before, {about.get('loadAverageAfter')} after; commit {about.get('commit') or '?'}"
            + (f"; {versions}" if versions else ""))


def _section(data: dict, stem: str, folder: Path) -> list[str]:
    title, section = SECTIONS.get(data["bench"], (data["bench"], None))
    lines = [f"## {title}" + (f" ({stem})" if stem != data["bench"] else ""), "",
             f"Machine: {_machine_line(data.get('machine') or {})}.", ""]
    if section is None:
        lines += ["```json", json.dumps({k: v for k, v in data.items() if k != "machine"}, indent=2)[:4000], "```"]
    else:
        try:
            lines += section(data, folder / f"{stem}.png")
        except (KeyError, TypeError) as exc:
            raise ReportError(f"{folder / (stem + '.json')}: missing or malformed figure {exc}") from None
    return lines + [""]


def build(folder: Path) -> Path:
    """Write folder/report.md (and the PNGs beside it); returns its path."""
    found, skipped = load(folder)
    lines = ["# kubetune benchmarks", "",
             "Written by `bench/report.py` from the JSON files in this folder (`make bench`). "
             "Commands and the recorded figures: docs/benchmarks.md.", ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(skipped) + ".", ""]
        for why in skipped:
            print(f"skipped {why}", file=sys.stderr)

    for bench in ORDER:
        if not any(d["bench"] == bench for d in found.values()):
            lines += [f"## {SECTIONS[bench][0]}", "", f"Not run: no `{bench}.json`.", ""]
        for stem in sorted(s for s, d in found.items() if d["bench"] == bench):
            lines += _section(found[stem], stem, folder)
    for stem in sorted(s for s, d in found.items() if d["bench"] not in ORDER):
        lines += _section(found[stem], stem, folder)
    target = folder / "report.md"
    staged = target.with_name("report.md.tmp")
    staged.write_text("\n".join(lines))
    os.replace(staged, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="out/bench", help="folder of the bench JSON files")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if not folder.is_dir():
        print(f"error: {folder}: no such folder (run `make bench`)", file=sys.stderr)
        return 2
    try:
        print(f"wrote {build(folder)}")
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
