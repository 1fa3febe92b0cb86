"""bench/report.py builds out/bench/report.md and its plots from the benches' JSON files.

The fixtures are small hand-written results in the shape bench/results.py writes (real
matplotlib renders the PNGs); the benches themselves are not run here (no timing in tests).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

MACHINE = {"cpu": "Test CPU", "cores": 2, "loadAverageBefore": 0.1, "loadAverageAfter": 0.4, "commit": "abc1234",
           "versions": {"torch": "2.13.0"}}
SETTINGS = {"weights": "float32", "adapterWeights": "float32", "autocast": "none", "gradientCheckpointing": False,
            "packing": "x", "batchSize": 4, "threads": 2, "malloc": "glibc"}


def run(name, tps, losses):
    return {"tokensPerSecond": tps, "tokensPerCpuSecond": tps / 2, "peakRssMiB": 600.0, "finalLoss": losses[-1],
            "losses": losses, "stepTokensPerSecond": [tps] * (len(losses) - 1), "shareOfMatmulPeak": 0.25,
            "settings": SETTINGS}


FIXTURES = {
    "trainer_throughput": {
        "model": "tiny", "matmulPeakFlops": 6e10, "args": {"steps": 4, "batch_size": 4, "max_seq_length": 256},
        "results": {"ours": run("ours", 300.0, [2.0, 1.5, 1.2, 1.0]), "trl": run("trl", 100.0, [2.0, 1.6, 1.3, 1.1])},
        "ratios": {"trl": {"tokensPerSecond": 3.0, "tokensPerCpuSecond": 3.0, "peakRss": 1.0}}},
    "operator_scale": {"jobs": 3, "client": "lean", "complete": True, "createToRayJobSeconds": [0.01, 0.02, 0.05],
                       "floorCreateSeconds": [0.001, 0.002], "p50": 0.02, "p95": 0.05, "floorP50": 0.001,
                       "floorP95": 0.002, "allProvisioningSeconds": 1.5, "operatorPeakRssMiB": 90.0, "cpuSeconds": {}},
    "gateway_overhead": {"gateway": {
        "direct": {"p50": 0.1, "p99": 0.2, "ttft50": 0.01, "rps": 100.0},
        "gateway": {"p50": 0.1004, "p99": 0.203, "ttft50": 0.011, "rps": 98.0},
        "latencyByQuantile": [{"q": 0.5, "direct": 0.1, "gateway": 0.1004}, {"q": 0.99, "direct": 0.2, "gateway": 0.203}],
        "addedP50Seconds": 0.0004, "throughputRatio": 0.98, "gatewayCpuPerRequestSeconds": 0.002}},
    "drift_calibration": {"alpha": 0.05, "results": [
        {"rows": 20, "trials": 10, "ours": {"falseAlarmRate": 0.0, "detectionRate": 0.7},
         "baseline": {"falseAlarmRate": 0.1, "detectionRate": 1.0}},
        {"rows": 100, "trials": 10, "ours": {"falseAlarmRate": 0.0, "detectionRate": 1.0},
         "baseline": {"falseAlarmRate": 0.1, "detectionRate": 1.0}}]},
    "canary_analysis": {"alpha": 0.05, "windows": 3, "trials": 5, "results": [
        {"requests": n, "scenario": sc, "meanWindowsOurs": 2.0, "ours": {"rate": r}, "marginOnly": {"rate": 0.8}}
        for n in (20, 100) for sc, r in (("same", 0.0), ("ttft x2", 1.0))]},
}


@pytest.fixture(scope="module")
def report(repo_root):
    spec = importlib.util.spec_from_file_location("bench_report", repo_root / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(folder, stem, bench, figures):
    (folder / f"{stem}.json").write_text(json.dumps({"bench": bench, "machine": MACHINE, **figures}))


def test_the_report_has_a_section_and_a_plot_per_bench(report, tmp_path):
    for bench, figures in FIXTURES.items():
        write(tmp_path, bench, bench, figures)
    write(tmp_path, "trainer_throughput_4x256", "trainer_throughput", FIXTURES["trainer_throughput"])
    (tmp_path / "old.json").write_text('{"results": []}')  # an older bench's output: listed, not fatal
    assert report.main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    for title, _ in report.SECTIONS.values():
        assert f"## {title}" in text
    assert "## Trainer: LoRA SFT against transformers Trainer and TRL (trainer_throughput_4x256)" in text
    assert "ours / trl: **3.00x** tokens/s" in text
    assert "floor: one API create (not a peer)" in text
    assert "Not run: no `engine_batching.json`" in text and "Not run: no `drift_throughput.json`" in text
    assert "Skipped: old.json" in text
    assert "Test CPU, 2 cores; load average 0.1 before, 0.4 after; commit abc1234" in text
    for stem in (*FIXTURES, "trainer_throughput_4x256"):
        png = tmp_path / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, stem
        assert f"]({stem}.png)" in text


def test_a_broken_file_is_named(report, tmp_path, capsys):
    (tmp_path / "trainer_throughput.json").write_text("{not json")
    assert report.main(["--dir", str(tmp_path)]) == 2
    assert "trainer_throughput.json: not JSON" in capsys.readouterr().err
    write(tmp_path, "trainer_throughput", "trainer_throughput", {"model": "tiny"})
    assert report.main(["--dir", str(tmp_path)]) == 2
    assert "trainer_throughput.json: missing or malformed figure" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()
    assert report.main(["--dir", str(tmp_path / "absent")]) == 2
