"""Replicas of one ModelDeployment share the payload log volume (the same claim subPath): each
gateway writes its own folder, named by POD_NAME, and the monitor reads them all.

One shared file is what breaks on a cluster: the claim is ReadWriteMany, usually NFS-like, where
appends from two clients are not atomic, and two writers rotating one file rename it under each
other (a rename that finds the file gone closes that writer's log for good). Two real
`kubetune serve --gateway-only` processes on one folder, under concurrent load and with a
rotation every few KiB, then SIGTERM: each wrote only its own folder, every line parses, none is
lost or written twice, and the monitor's reader counts what was sent.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from kubetune.monitoring.records import load_many, payload_log_files
from kubetune.serving.payload_log import instance_log_dir
from tests.serving.serving_support import ServeProcess

PER_REPLICA = 120


def _send(url: str, index: int) -> str:
    answer = httpx.post(url + "/v1/completions", json={"model": "base", "prompt": f"question {index}"}, timeout=30)
    answer.raise_for_status()
    return answer.headers["x-request-id"]


@pytest.mark.slow
def test_two_replicas_on_one_folder_lose_no_line(tmp_path, upstream):
    upstream.text = "Hello there, friend."
    logs = tmp_path / "logs"
    args = ["--gateway-only", "--upstream", upstream.url, "--port", "0", "--log-dir", str(logs),
            "--sample-rate", "1.0", "--safety", "none", "--log-max-bytes", "4096", "--log-backups", "1000"]
    replicas = [ServeProcess(args, cwd=tmp_path, env={"POD_NAME": pod}) for pod in ("chat-7d9f-a", "chat-7d9f-b")]
    try:
        with ThreadPoolExecutor(16) as pool:
            jobs = [pool.submit(_send, replica.url, i) for i in range(PER_REPLICA) for replica in replicas]
            sent = [job.result() for job in jobs]
    finally:
        codes = [replica.terminate(timeout=60) for replica in replicas]
    assert codes == [0, 0]
    files = payload_log_files(logs)
    assert {f.relative_to(logs).parts[0] for f in files} == {"chat-7d9f-a", "chat-7d9f-b"}
    assert len(files) > 4  # rotation happened in both folders
    lines = [line for f in files for line in f.read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in lines]  # every line is whole JSON
    assert sorted(ids) == sorted(sent) and len(set(sent)) == 2 * PER_REPLICA
    window = load_many([logs])
    assert window.malformed == 0 and len(window.records) == 2 * PER_REPLICA


def test_instance_folder_is_a_pod_name_or_nothing():
    assert instance_log_dir("/var/log/kubetune", "chat-7d9f-a") == "/var/log/kubetune/chat-7d9f-a"
    assert instance_log_dir("/var/log/kubetune", None) == "/var/log/kubetune"
    for bad in ("..", "a/b", "-x", "x y"):
        with pytest.raises(ValueError, match="--log-instance"):
            instance_log_dir("/var/log/kubetune", bad)
