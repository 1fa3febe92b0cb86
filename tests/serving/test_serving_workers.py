"""Gateway workers (`kubetune serve --gateway-only --workers N`) and the safety scorer process.

Real processes throughout: the supervisor and its workers on one SO_REUSEPORT port, the
offline scorer (scikit-learn) in its spawned child, the official `openai` client over HTTP.
The upstream is the scripted engine of serving_support.py (harmful text on demand).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from kubetune.common.safety import SafetyScore
from kubetune.serving.gateway import Gateway, GatewayConfig
from kubetune.serving.peers import owner_of, peer_app, socket_path
from kubetune.serving.safety_process import ProcessScorer

from tests.serving.serving_support import HARMFUL, ServeProcess



def read_logs(log_dir: Path) -> list[dict]:
    """Every worker's records, as the monitor reads them (payloads.jsonl* under the folder)."""
    return [json.loads(line) for path in sorted(Path(log_dir).rglob("payloads.jsonl*"))
            for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def workers_of(proc) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children() if "worker_main" in " ".join(p.cmdline())]


def scorer_of(worker: psutil.Process) -> psutil.Process | None:
    kids = [p for p in worker.children() if "spawn_main" in " ".join(p.cmdline())
            and "resource_tracker" not in " ".join(p.cmdline())]
    return kids[0] if kids else None


def chat(url: str, text: str) -> str:
    """One streamed chat on a fresh connection (so the kernel may pick any worker); its request id."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="base", stream=True, messages=[{"role": "user", "content": text}])
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == HARMFUL
    client.close()
    return raw.headers["x-request-id"]


def metric_sum(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


# ----------------------------------------------------------------------------- the scorer process


@pytest.mark.slow
def test_scorer_process_restarts_after_kill_and_rescoring_fails_closed():
    """The child is killed between batches and hung mid-batch: each time it is restarted and the
    batch is scored by the new one. When it cannot be restarted the batch comes back unscored
    (None, logged as `safety: null`), never as safe."""
    scorer = ProcessScorer("offline", batch_timeout=10)
    try:
        pairs = [("q", HARMFUL), ("q", "Hello there, friend.")]
        first = scorer.score_many(pairs)
        assert [s.flagged for s in first] == [True, False] and "weapons" in first[0].categories
        assert isinstance(first[0], SafetyScore) and scorer.pid != os.getpid()

        old = scorer.pid
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE,
                 what="the scorer child to die")
        assert [s.flagged for s in scorer.score_many(pairs)] == [True, False]
        assert scorer.restarts == 1 and scorer.pid != old

        scorer.batch_timeout = 3  # a hung child (stopped) is taken for dead after the timeout
        os.kill(scorer.pid, signal.SIGSTOP)
        assert [s.flagged for s in scorer.score_many(pairs)] == [True, False]
        assert scorer.restarts == 2

        os.kill(scorer.pid, signal.SIGKILL)
        scorer.kind = "no-such-scorer"  # every restart fails from now on
        assert scorer.score_many(pairs) == [None, None]
    finally:
        scorer.close()
    assert scorer.pid is None


# ----------------------------------------------------------------------------- feedback between workers


def test_feedback_for_another_workers_request_is_forwarded_to_it(loop_thread, tmp_path, upstream):
    """Two workers' gateways in one process (the kernel cannot be told which worker gets a
    connection): feedback posted to worker 1 for worker 0's request lands in worker 0's log."""
    upstream.text = "Hello there, friend."
    peers = tmp_path / "peers"
    peers.mkdir()
    gateways, urls = [], []
    for index in (0, 1):
        config = GatewayConfig(upstream=upstream.url, log_dir=str(tmp_path / f"worker-{index}"), sample_rate=0.0,
                               safety_scorer="none", worker_index=index, worker_count=2, peer_dir=str(peers))
        gateway = Gateway(config)
        urls.append(loop_thread.serve(gateway.app()))
        gateways.append(gateway)

    async def listen(gateway, index):
        from aiohttp import web

        runner = web.AppRunner(peer_app(gateway.payloads))
        await runner.setup()
        await web.UnixSite(runner, str(socket_path(peers, index))).start()
        loop_thread.runners.append(runner)

    loop_thread.run(listen(gateways[0], 0))
    client0 = openai.OpenAI(base_url=urls[0] + "/v1", api_key="k", max_retries=0)
    rid = client0.completions.with_raw_response.create(model="base", prompt="hi").headers["x-request-id"]
    assert owner_of(rid) == 0
    answer = httpx.post(urls[1] + "/v1/feedback", json={"id": rid, "rating": -1, "comment": "wrong"})
    assert answer.status_code == 200 and answer.json()["logged"] is True
    unknown = httpx.post(urls[1] + "/v1/feedback", json={"id": "req-w0-nothing", "rating": -1})
    assert unknown.status_code == 404
    down = httpx.post(urls[0] + "/v1/feedback", json={"id": "req-w1-abc", "rating": 1})  # worker 1 has no socket
    assert down.status_code == 503 and down.json()["error"]["code"] == "worker_unavailable"
    for gateway in gateways:
        gateway.close_logs()
    (rec,) = read_logs(tmp_path / "worker-0")
    assert rec["id"] == rid and rec["feedback"] == {"rating": -1, "comment": "wrong"}
    assert read_logs(tmp_path / "worker-1") == []


# ----------------------------------------------------------------------------- the whole thing


@pytest.mark.slow
def test_two_workers_share_the_port_restart_and_flush_on_sigterm(tmp_path, upstream, monkeypatch):
    """`serve --gateway-only --workers 2` as the operator would start it: both workers answer on
    one port and log their own requests, feedback reaches the record whichever worker gets it,
    /metrics counts every worker's requests, a killed worker and a killed scorer process are
    replaced, and SIGTERM leaves every request on disk with a real safety score."""
    upstream.text = HARMFUL
    (tmp_path / "keys").write_text("k\n")
    logs = tmp_path / "logs"
    private_parent = Path(tempfile.mkdtemp(prefix="kt-", dir="/tmp"))  # short: Unix socket paths fit
    monkeypatch.setenv("TMPDIR", str(private_parent))  # where the supervisor makes its private folder
    proc = ServeProcess(["--gateway-only", "--upstream", upstream.url, "--port", "0", "--workers", "2",
                         "--log-dir", str(logs), "--sample-rate", "1.0", "--safety", "offline",
                         "--safety-action", "log", "--api-keys", str(tmp_path / "keys")], cwd=tmp_path)
    try:
        workers = workers_of(proc.proc)
        assert len(workers) == 2
        ids = [chat(proc.url, f"n{i}") for i in range(24)]
        assert {owner_of(rid) for rid in ids} == {0, 1}, ids  # 24 connections: both workers served some

        # Feedback on fresh connections lands on either worker; every one must reach its record.
        feedback = {}
        for rid in (next(r for r in ids if owner_of(r) == 0), next(r for r in ids if owner_of(r) == 1)):
            for attempt in range(4):
                comment = f"{rid[-6:]}-{attempt}"
                answer = httpx.post(proc.url + "/v1/feedback", headers={"Authorization": "Bearer k"},
                                    json={"id": rid, "rating": -1, "comment": comment})
                assert answer.status_code == 200 and answer.json()["logged"] is True, answer.text
                feedback[rid] = comment

        # Metrics: any worker answers the scrape with the sum over both.
        assert all(metric_sum(proc.url, "kubetune_gateway_requests_total") == 24 for _ in range(4))

        # Scorer processes killed mid-run are replaced; their batches are scored by the new ones.
        victims = [scorer_of(w) for w in workers]
        assert None not in victims
        for victim in victims:
            victim.kill()
        ids += [chat(proc.url, f"after-scorer-kill-{i}") for i in range(6)]
        wait_for(lambda: "restarting it and scoring the batch again" in proc.stderr(), what="a scorer restart")

        # A worker killed outright (after its records reached the disk) is restarted on the same port.
        mine = {rid for rid in ids if owner_of(rid) == 1}
        wait_for(lambda: mine <= {r["id"] for r in read_logs(logs / "worker-1")}, what="worker 1's records")
        workers[1].kill()
        wait_for(lambda: proc.stderr().count("worker 1 (pid") == 2, what="the supervisor to restart worker 1")
        ids += [chat(proc.url, f"after-worker-kill-{i}") for i in range(6)]
    finally:
        code = proc.terminate(timeout=60)
    assert code == 0, proc.stderr()
    assert "worker 1 exited" in proc.stderr()
    records = read_logs(logs)
    by_worker = {p.parent.name for p in logs.rglob("payloads.jsonl")}
    assert by_worker == {"worker-0", "worker-1"}
    last = {}
    for rec in records:  # readers keep the last line per id
        last[rec["id"]] = rec
    assert set(ids) <= set(last), set(ids) - set(last)
    for rid in ids:
        assert last[rid]["safety"] is not None and last[rid]["safety"]["flagged"] is True, last[rid]
    for rid, comment in feedback.items():
        assert last[rid]["feedback"] == {"rating": -1, "comment": comment}
    assert list(private_parent.iterdir()) == []  # the private folder (sockets, metric files) is gone
    private_parent.rmdir()
