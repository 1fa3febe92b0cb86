"""kubetune.status_writer against the emulator: throttled progress, results always written."""

from __future__ import annotations

import logging

import pytest

from kubetune.status_writer import FineTuneJobStatusSink
from tests.operator.helpers import ftj_manifest, status_of


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def job(kube_http, namespace):
    kube_http.create("finetunejobs", namespace, ftj_manifest("w", namespace))
    return namespace, "w"


def test_progress_is_throttled_and_flushed(kube_client, kube_http, job):
    namespace, name = job
    clock = FakeClock()
    sink = FineTuneJobStatusSink(namespace, name, api_client=kube_client, min_interval=5.0, clock=clock)
    sink.on_progress({"step": 1, "totalSteps": 10, "loss": 2.0})
    assert status_of(kube_http, namespace, name)["progress"]["step"] == 1
    clock.now += 1
    sink.on_progress({"step": 2, "totalSteps": 10, "loss": 1.9})
    assert status_of(kube_http, namespace, name)["progress"]["step"] == 1  # within 5 s: held back
    clock.now += 5
    sink.on_progress({"step": 3, "totalSteps": 10, "loss": 1.8})
    assert status_of(kube_http, namespace, name)["progress"] == {"step": 3, "totalSteps": 10, "loss": 1.8}
    clock.now += 1
    sink.on_progress({"step": 4, "totalSteps": 10, "loss": 1.7})
    sink.close()  # the held-back progress is not lost
    assert status_of(kube_http, namespace, name)["progress"]["step"] == 4
    assert sink.writes == 3


def test_phase_and_results_are_written_at_once(kube_client, kube_http, job):
    namespace, name = job
    clock = FakeClock()
    sink = FineTuneJobStatusSink(namespace, name, api_client=kube_client, clock=clock)
    sink.on_progress({"step": 9})
    sink.on_progress({"step": 10})
    sink.on_phase("Exporting")
    sink.on_result({"artifact": {"uri": "pvc://models/w", "kind": "adapter", "digest": "sha256:ab"},
                    "evaluation": {"passed": True, "metrics": {"evalLoss": 1.2}}})
    status = status_of(kube_http, namespace, name)
    assert status["phase"] == "Evaluating" and status["progress"]["step"] == 10
    assert status["artifact"]["digest"] == "sha256:ab" and status["evaluation"]["passed"] is True


def test_failures_never_raise_into_training(k8s_emulator, kube_client, job, caplog):
    namespace, name = job
    sink = FineTuneJobStatusSink(namespace, name, api_client=kube_client, retry_delay=0.01)
    k8s_emulator.fail_next("PATCH", rf"/finetunejobs/{name}/status$", 500, times=1)
    sink.on_result({"artifact": {"uri": "pvc://models/w", "kind": "adapter"}})  # retried: second try passes
    assert sink.writes == 1
    missing = FineTuneJobStatusSink(namespace, "does-not-exist", api_client=kube_client, retry_delay=0.01)
    with caplog.at_level(logging.ERROR, logger="kubetune.status_writer"):
        missing.on_result({"artifact": {"uri": "x", "kind": "adapter"}})
    assert "does-not-exist" in caplog.text and missing.writes == 0
