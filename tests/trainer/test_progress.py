"""Progress sinks: console lines, JSON lines, fan-out isolation, the in-pod status sink loader."""

from __future__ import annotations

import io
import json
import sys
import types

import pytest

from kubetune.trainer import progress

SAMPLE = progress.make_progress(step=3, total_steps=10, epoch=0.3, loss=1.23456, learning_rate=2e-4,
                                tokens_per_second=1234.5, eta_seconds=75)


def test_progress_dict_has_exactly_the_status_keys():
    from kubetune.api.finetunejob import Progress

    assert set(SAMPLE) == set(progress.PROGRESS_KEYS)
    Progress.model_validate(SAMPLE)  # the operator can put it in status as it is


def test_console_prints_plain_lines_when_not_a_tty():
    out = io.StringIO()
    sink = progress.ConsoleSink(out)
    sink.on_progress(SAMPLE)
    sink.on_phase("Evaluating", "3 samples")
    line = out.getvalue().splitlines()
    assert line[0] == "[train] step 3/10 | loss 1.2346 | lr 2.00e-04 | 1234 tok/s | ETA 01:15"
    assert line[1] == "[Evaluating] 3 samples"


def test_console_draws_a_bar_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    sink = progress.ConsoleSink(out)
    sink.on_progress({**SAMPLE, "tokensPerSecond": 123456.0})
    assert out.getvalue().startswith("\r[#######-----------------] step 3/10")
    first = out.getvalue()
    sink.on_progress({**SAMPLE, "step": 4, "tokensPerSecond": 5.0})
    redraw = out.getvalue()[len(first):]
    assert redraw.startswith("\r[#########---------------] step 4/10") and "\n" not in redraw
    assert len(redraw) == len(first)  # the shorter line is padded over the longer one's tail
    sink.on_phase("Exporting", "out")
    assert out.getvalue().endswith("\n[Exporting] out\n")


def test_json_lines_file_records_every_event(tmp_path):
    sink = progress.JsonLinesSink(tmp_path / "progress.jsonl")
    sink.on_phase("Training", "go")
    sink.on_progress(SAMPLE)
    sink.on_result({"artifact": {"uri": "x", "kind": "adapter"}})
    sink.close()
    events = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["phase", "progress", "result"]
    assert events[1]["step"] == 3 and events[2]["artifact"]["kind"] == "adapter"


def test_a_failing_sink_does_not_stop_the_others(caplog):
    class Broken:
        def on_progress(self, p):
            raise RuntimeError("API server down")

    recorder = progress.RecordingSink()
    progress.FanOutSink([Broken(), None, recorder]).on_progress(SAMPLE)
    assert recorder.progress() == [SAMPLE]
    assert "Broken.on_progress failed" in caplog.text


def test_status_sink_is_loaded_by_module_name_when_the_job_is_known(monkeypatch):
    created = []

    class FakeStatusSink:
        def __init__(self, namespace, name):
            created.append((namespace, name))

    module = types.ModuleType(progress.STATUS_SINK_MODULE)
    module.FineTuneJobStatusSink = FakeStatusSink
    monkeypatch.setitem(sys.modules, progress.STATUS_SINK_MODULE, module)
    env = {"KUBETUNE_JOB_NAME": "job-a", "KUBETUNE_JOB_NAMESPACE": "team-1"}
    assert isinstance(progress.load_status_sink(env), FakeStatusSink)
    assert created == [("team-1", "job-a")]
    assert progress.load_status_sink({}) is None


def test_missing_status_writer_is_a_warning_not_a_failure(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, progress.STATUS_SINK_MODULE, None)  # import fails
    env = {"KUBETUNE_JOB_NAME": "job-a", "KUBETUNE_JOB_NAMESPACE": "team-1"}
    assert progress.load_status_sink(env) is None
    assert "not reporting progress to FineTuneJob team-1/job-a" in caplog.text


def test_throughput_and_eta():
    now = [0.0]
    meter = progress.ThroughputMeter(start_step=2, total_steps=12, clock=lambda: now[0])
    now[0] = 4.0
    meter.add_tokens(800)
    assert meter.tokens_per_second() == pytest.approx(200.0)
    assert meter.eta_seconds(4) == pytest.approx(16.0)  # 2 s per step, 8 steps left


def test_real_status_writer_is_loaded_in_the_pod_path(tmp_path, monkeypatch):
    """The trainer loads kubetune.status_writer by name: a renamed class or changed constructor must fail here."""
    from kubetune.status_writer import FineTuneJobStatusSink

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBETUNE_JOB_NAME", "job-a")
    monkeypatch.setenv("KUBETUNE_JOB_NAMESPACE", "team-1")
    sinks = progress.default_sinks(None, console=False)
    [sink] = [s for s in sinks.sinks if isinstance(s, FineTuneJobStatusSink)]
    assert (sink.namespace, sink.name) == ("team-1", "job-a")
    assert sink.path.endswith("/namespaces/team-1/finetunejobs/job-a/status")


def test_local_ray_workers_silence_the_placement_group_cleaner_warning():
    """Ray Train's cleaner warns every second when Ray runs without its dashboard (as kubetune
    starts it locally); the workers' setup hook must lower exactly that logger."""
    import logging

    from kubetune.trainer import ray_quiet

    noisy = logging.getLogger(ray_quiet.NOISY_LOGGERS[0])
    noisy.setLevel(logging.NOTSET)
    ray_quiet.quiet_ray_train_noise()
    assert not noisy.isEnabledFor(logging.WARNING) and noisy.isEnabledFor(logging.ERROR)


def test_the_dataset_report_becomes_a_status_summary_and_a_console_line():
    from kubetune.trainer.data_report import status_summary, summary_line

    report = {"rowsIn": 50, "train": 40, "validation": 5, "digest": "sha256:ab",
              "dropped": {"badRow": 1, "duplicateExact": 4, "tooLong": 0},
              "redactions": {"byKind": {"EMAIL": 2, "PHONE": 1}, "rows": 2, "total": 3, "enabled": True},
              "tokens": {"train": {"tokens": 4000}},
              "sources": [{"name": f"s{i}", "uri": "x", "rowsRead": 1, "rowsUsed": 1, "badRows": 0} for i in range(40)]}
    summary = status_summary(report)
    assert summary["dropped"] == {"badRow": 1, "duplicateExact": 4, "tooLong": 0}
    assert (summary["redactedRows"], summary["redactions"], summary["trainTokens"]) == (2, {"EMAIL": 2, "PHONE": 1}, 4000)
    assert len(summary["sources"]) == 32 and "uri" not in summary["sources"][0]  # the status stays small
    line = summary_line(summary)
    assert line == ("50 rows in, 40 train, 5 validation; dropped: badRow 1, duplicateExact 4; "
                    "PII redacted in 2 rows (EMAIL 2, PHONE 1)")
    from kubetune.api import FineTuneJobStatus

    FineTuneJobStatus.model_validate({"dataset": summary})  # the CRD's status schema takes it


def test_closing_the_json_lines_sink_plots_loss_learning_rate_and_tokens_per_second(tmp_path):
    import xml.etree.ElementTree as ET

    path = tmp_path / "progress.jsonl"
    sink = progress.JsonLinesSink(path)
    for step, loss in ((1, 2.0), (2, 1.5), (3, 1.0)):
        sink.on_progress(progress.make_progress(step=step, total_steps=3, epoch=step / 3, loss=loss,
                                                learning_rate=1e-4, tokens_per_second=100.0 * step, eta_seconds=0))
    sink.close()
    with path.open("a") as f:  # a resumed run repeats step 3 (the last report wins) after a cut line
        f.write('{"event": "progress", "st\n')
        f.write(json.dumps({"event": "progress", **progress.make_progress(
            step=3, total_steps=3, epoch=1, loss=0.5, learning_rate=1e-4, tokens_per_second=300.0, eta_seconds=0)}) + "\n")
    from kubetune.trainer.progress_plot import per_step, write_plot

    assert per_step(path.read_text().splitlines())[3]["loss"] == 0.5
    svg = write_plot(path)
    assert svg == tmp_path / "progress.svg"
    root = ET.fromstring(svg.read_text())  # well-formed SVG
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 3 and all(len(p.get("points").split()) == 3 for p in lines)
    loss_y = [float(xy.split(",")[1]) for xy in lines[0].get("points").split()]
    assert loss_y[0] < loss_y[1] < loss_y[2]  # falling loss is drawn falling (SVG y grows downwards)
    assert "training loss" in svg.read_text() and "step 1" in svg.read_text() and "step 3" in svg.read_text()
    empty = tmp_path / "empty" / "progress.jsonl"
    empty.parent.mkdir()
    empty.write_text('{"event": "phase", "phase": "Training"}\n')
    assert write_plot(empty) is None and not (empty.parent / "progress.svg").exists()
