"""operator.child_watch: the list+watch streams of the FineTuneJobs' children.

The flow tests (test_operator_flow.py) run these watches against the emulator. Here a scripted
API stands in for the API server, because the emulator cannot be made, on demand, to compact
its history (410 Gone), to fail a watch with an ERROR event, or to start serving a kind later.
"""

from __future__ import annotations

import asyncio

import pytest

from kubetune.operator import child_watch
from kubetune.operator.child_watch import ChildWatch, _PerObject
from kubetune.operator.k8s import KINDS, NotFound, ServerError


def _obj(name: str, rv: int, **status) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv),
                         "labels": {"kubetune.io/finetunejob": name}}, "status": status}


class ScriptedApi:
    """`call` answers lists from `lists` in order; `watch` yields the next script of `streams`."""

    def __init__(self, lists, streams):
        self.lists, self.streams = list(lists), list(streams)
        self.watched_from: list[str] = []
        self.selectors: list[str] = []

    async def call(self, method, path, query=None, **_):
        assert method == "GET" and path == "/apis/ray.io/v1/namespaces/ns/rayjobs"
        self.selectors.append(query["labelSelector"])
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def watch(self, res, namespace, *, resource_version, label_selector=None, timeout_seconds=300):
        self.watched_from.append(resource_version)
        if not self.streams:
            await asyncio.Event().wait()  # nothing more: a quiet, open stream
        script = self.streams.pop(0)
        if isinstance(script, Exception):
            raise script
        for event in script:
            yield event


async def _run_until(watch: ChildWatch, seen: list, count: int, timeout: float = 5.0) -> None:
    task = asyncio.get_running_loop().create_task(watch.run())
    try:
        async with asyncio.timeout(timeout):
            while len(seen) < count:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await watch.stop()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(child_watch, "BACKOFF_SECONDS", (0.01,))
    monkeypatch.setattr(child_watch, "NOT_SERVED_RECHECK_SECONDS", 0.01)
    monkeypatch.setattr(child_watch, "RECONNECT_PAUSE_SECONDS", 0.01)


async def test_resumes_from_the_last_version_and_relists_after_410():
    api = ScriptedApi(
        lists=[{"metadata": {"resourceVersion": "5"}, "items": [_obj("a", 3)]},
               {"metadata": {"resourceVersion": "20"}, "items": [_obj("a", 12, jobStatus="RUNNING")]}],
        streams=[
            [{"type": "ADDED", "object": _obj("a", 6)}, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "8"}}}],
            ServerError(0, "ClientConnectionError", "reset"),
            [{"type": "MODIFIED", "object": _obj("c", 9, jobDeploymentStatus="Initializing")},
             {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}],
        ])
    seen = []

    async def handler(event_type, obj):
        seen.append((event_type, obj["metadata"]["name"], obj["metadata"]["resourceVersion"], obj["kind"],
                     obj["apiVersion"]))

    watch = ChildWatch(api, "RayJob", KINDS["RayJob"], "ns", "kubetune.io/finetunejob", handler)
    await _run_until(watch, seen, 3)
    # The first listing is not handed on (the jobs' own listing reconciles them); after 410 the
    # relisted objects are, as MODIFIED, since what happened in the gap is unknown.
    assert sorted(seen) == [("ADDED", "a", "6", "RayJob", "ray.io/v1"), ("MODIFIED", "a", "12", "RayJob", "ray.io/v1"),
                            ("MODIFIED", "c", "9", "RayJob", "ray.io/v1")]
    # Resumed from the bookmark after the stream ended, from it again after the failure, from the
    # relist's version after 410.
    assert api.watched_from == ["5", "8", "8", "20"]
    assert api.selectors == ["kubetune.io/finetunejob"] * 2 and watch.relists == 1


async def test_a_kind_that_is_not_served_is_looked_for_again():
    api = ScriptedApi(lists=[NotFound(404, "NotFound", "the server could not find the requested resource"),
                             {"metadata": {"resourceVersion": "7"}, "items": [_obj("b", 7)]}],
                      streams=[])
    seen = []

    async def handler(event_type, obj):
        seen.append((event_type, obj["metadata"]["name"]))

    watch = ChildWatch(api, "RayJob", KINDS["RayJob"], "ns", "kubetune.io/finetunejob", handler)
    await _run_until(watch, seen, 1)
    assert seen == [("MODIFIED", "b")]  # KubeRay installed later: what exists then is news
    assert api.watched_from == ["7"]


async def test_events_of_one_object_run_one_at_a_time_and_the_newest_waiting_one_wins():
    gate = asyncio.Event()
    calls = []

    async def handler(event_type, obj):
        calls.append((obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
        if obj["metadata"]["name"] == "a" and obj["metadata"]["resourceVersion"] == "1":
            await gate.wait()

    objects = _PerObject(handler)
    objects.submit("ADDED", _obj("a", 1))
    await asyncio.sleep(0.01)  # "a"@1 is being handled
    objects.submit("MODIFIED", _obj("a", 2))
    objects.submit("MODIFIED", _obj("a", 3))
    objects.submit("MODIFIED", _obj("b", 1))  # other objects are not held up
    await asyncio.sleep(0.01)
    assert calls == [("a", "1"), ("b", "1")]
    gate.set()
    await asyncio.gather(*objects.tasks)
    assert calls == [("a", "1"), ("b", "1"), ("a", "3")]


async def test_a_failing_handler_does_not_stop_the_object_queue(caplog):
    calls = []

    async def handler(event_type, obj):
        calls.append(obj["metadata"]["resourceVersion"])
        if len(calls) == 1:
            raise RuntimeError("boom")

    objects = _PerObject(handler)
    objects.submit("ADDED", _obj("a", 1))
    await asyncio.gather(*objects.tasks)
    objects.submit("MODIFIED", _obj("a", 2))
    await asyncio.gather(*objects.tasks)
    assert calls == ["1", "2"]
    assert "handling a ADDED event of ns/a failed" in caplog.text
