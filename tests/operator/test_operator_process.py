"""`kubetune operator` as users run it: a real process against the emulator.

Covers what the in-process tests cannot: credentials from KUBECONFIG, settings from the
environment (one watched namespace), JSON logs, the liveness endpoint, every metric family
on the metrics port from the start, and a clean exit on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.harness.client import wait_for
from tests.operator.helpers import ftj_manifest, wait_condition, wait_phase

METRIC_FAMILIES = (
    'kubetune_finetunejobs{phase="Pending"}',
    "kubetune_finetunejob_duration_seconds_count",
    'kubetune_reconcile_errors_total{kind="FineTuneJob"}',
    'kubetune_modeldeployments{phase="Ready"}',
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return None


@pytest.fixture
def operator_process(k8s_emulator, namespace, tmp_path):
    liveness, metrics = _free_port(), _free_port()
    env = {**os.environ, "KUBECONFIG": str(k8s_emulator.kubeconfig), "HOME": str(tmp_path),
           "KUBETUNE_NAMESPACES": namespace, "KUBETUNE_LOG_FORMAT": "json"}
    log_path = tmp_path / "operator.log"
    cli = Path(sys.executable).with_name("kubetune")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(cli), "operator", "--standalone", "--liveness", f"http://127.0.0.1:{liveness}/healthz",
             "--metrics-port", str(metrics)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield proc, f"http://127.0.0.1:{liveness}/healthz", f"http://127.0.0.1:{metrics}/metrics", log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_operator_process_serves_health_metrics_reconciles_and_stops_on_sigterm(operator_process, kube_http, namespace):
    proc, liveness, metrics, log_path = operator_process
    assert wait_for(lambda: _get(liveness) is not None, 30, message="liveness endpoint answers") is not None
    exported = _get(metrics)
    assert exported is not None
    assert all(family in exported for family in METRIC_FAMILIES), [f for f in METRIC_FAMILIES if f not in exported]

    kube_http.create("finetunejobs", namespace, ftj_manifest("job", namespace))
    kube_http.create("finetunejobs", namespace, ftj_manifest("bad", namespace, spec={"baseModel": {"uri": "x"}}))
    wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train"), 20, message="RayJob created by the process")
    wait_phase(kube_http, namespace, "job", "Pending", timeout=20)
    cond = wait_condition(kube_http, namespace, "bad", "Accepted", "False", "InvalidSpec")
    assert "spec.datasets" in cond["message"] and "spec.output" in cond["message"]  # every error, by field
    wait_for(lambda: 'kubetune_finetunejobs{phase="Failed"} 1.0' in (_get(metrics) or ""), 20, message="phase gauge")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is a JSON record
    assert all("message" in r and "severity" in r for r in records)
    assert any("SIGTERM" in r["message"] for r in records)
