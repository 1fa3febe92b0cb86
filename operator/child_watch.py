"""Watches of the FineTuneJobs' children (RayJobs, batch Jobs, pods), without kopf.

kopf runs every watch event through its whole handler machinery (causes, per-object loggers,
handler kwargs, patch bookkeeping): about 1 ms of CPU per event here. A job's children send
at least two events (our own create, then each status change), and when hundreds of jobs
arrive at once those events took a third of the operator's CPU before the last RayJob existed
(profiled with `bench/operator_scale.py --py-spy`). All they need is "this job's child
changed: re-read and write the status", so they are plain list+watch streams, as an informer
would keep them:

- the label selector is applied by the API server (only kubetune's children arrive);
- a stream that ends is resumed from the last resourceVersion; `410 Gone` lists again, and
  every listed object counts as changed (events in the gap are lost, the state is not);
- a kind that is not served (KubeRay not installed) is looked for again every
  NOT_SERVED_RECHECK_SECONDS; other failures back off;
- events are handled one at a time per object, the newest replacing one still waiting, and
  concurrently across objects (a burst of status changes costs one sync per job, not one per
  event).

The FineTuneJobs themselves stay with kopf (`handlers_finetunejob.finetunejob_event`), and the
periodic resync is still the level-based safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .k8s import KubeApi, KubeError, NotFound, Resource

log = logging.getLogger(__name__)

NOT_SERVED_RECHECK_SECONDS = 30.0
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
RECONNECT_PAUSE_SECONDS = 0.5

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Called with the event type (ADDED, MODIFIED, DELETED) and the object."""


class _PerObject:
    """Runs the handler for one object at a time; a newer event replaces one still waiting."""

    def __init__(self, handler: Handler):
        self._handler = handler
        self._waiting: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._busy: set[tuple[str, str]] = set()
        self.tasks: set[asyncio.Task] = set()

    def submit(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        self._waiting[key] = (event_type, obj)
        if key in self._busy:
            return
        self._busy.add(key)
        task = asyncio.get_running_loop().create_task(self._drain(key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self, key: tuple[str, str]) -> None:
        try:
            while (item := self._waiting.pop(key, None)) is not None:
                try:
                    await self._handler(*item)
                except asyncio.CancelledError:
                    raise
                except Exception:  # one object's trouble must not stop the stream; the resync retries
                    log.exception("handling a %s event of %s/%s failed", item[0], *key)
        finally:
            self._busy.discard(key)


class ChildWatch:
    """list+watch of one kind, in one namespace or cluster-wide, feeding `handler`."""

    def __init__(self, api: KubeApi, kind: str, res: Resource, namespace: str | None, label_selector: str,
                 handler: Handler, *, timeout_seconds: int = 300):
        self.api, self.kind, self.res, self.namespace = api, kind, res, namespace
        self.label_selector = label_selector
        self.timeout_seconds = timeout_seconds
        self._objects = _PerObject(handler)
        self.relists = 0  # lists after the first one (410 Gone, the kind served again): for tests and logs

    def _where(self) -> str:
        return f"{self.kind} in {self.namespace}" if self.namespace else f"{self.kind} (all namespaces)"

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Watch objects carry kind and apiVersion on a real API server; make sure of it."""
        obj.setdefault("kind", self.kind)
        obj.setdefault("apiVersion", self.res.api_version)
        return obj

    async def _list(self, *, announce: bool) -> str | None:
        """The current resourceVersion (None: the kind is not served). After a gap
        (`announce`) every listed object is handed on as MODIFIED."""
        try:
            payload = await self.api.call("GET", self.res.path(self.namespace),
                                          query={"labelSelector": self.label_selector})
        except NotFound:
            return None
        if announce:
            for obj in payload.get("items") or []:
                self._objects.submit("MODIFIED", self._stamp(obj))
        return str((payload.get("metadata") or {}).get("resourceVersion") or "0")

    async def _follow(self, version: str) -> str | None:
        """Hand on one stream's events; returns the resourceVersion to resume from (None:
        list again)."""
        opened, events = asyncio.get_running_loop().time(), 0
        stream = self.api.watch(self.res, self.namespace, resource_version=version,
                                label_selector=self.label_selector, timeout_seconds=self.timeout_seconds)
        async with contextlib.aclosing(stream):
            async for event in stream:
                events += 1
                event_type = event.get("type")
                obj = event.get("object") or {}
                if event_type == "ERROR":
                    if obj.get("code") == 410:  # too old: the history was compacted
                        log.info("watch of %s expired (410 Gone); listing again", self._where())
                        return None
                    raise KubeError(obj.get("code") or 0, obj.get("reason") or "", obj.get("message") or "watch error",
                                    method="WATCH", path=self.res.path(self.namespace))
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event_type in ("ADDED", "MODIFIED", "DELETED"):
                    self._objects.submit(event_type, self._stamp(obj))
        if not events and asyncio.get_running_loop().time() - opened < 1.0:
            await asyncio.sleep(RECONNECT_PAUSE_SECONDS)  # a server that ends streams at once: do not spin
        return version

    async def run(self) -> None:
        version: str | None = None
        listed = False
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._list(announce=listed)
                    if version is None:
                        if not listed:
                            log.info("%s is not served by this cluster; looking again every %.0fs",
                                     self._where(), NOT_SERVED_RECHECK_SECONDS)
                        listed = True  # whatever appears later is news
                        await asyncio.sleep(NOT_SERVED_RECHECK_SECONDS)
                        continue
                    if listed:
                        self.relists += 1
                    listed = True
                version = await self._follow(version)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, KubeError) and exc.status in (404, 410):
                    version = None  # gone (CRD deleted) or expired: list again
                    if exc.status == 410:
                        continue
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("watch of %s failed (%s); retrying in %.1fs", self._where(), exc, delay)
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        tasks = list(self._objects.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def start_child_watches(api: KubeApi, children: dict[str, Resource], namespaces: tuple[str, ...],
                        label_selector: str, handler_for: Callable[[str], Handler]) -> list[tuple[ChildWatch, asyncio.Task]]:
    """One watch per child kind and namespace (one cluster-wide when `namespaces` is empty)."""
    loop = asyncio.get_running_loop()
    out = []
    for kind, res in children.items():
        for namespace in namespaces or (None,):
            watch = ChildWatch(api, kind, res, namespace, label_selector, handler_for(kind))
            out.append((watch, loop.create_task(watch.run(), name=f"watch {kind} {namespace or '*'}")))
    return out


async def stop_child_watches(watches: list[tuple[ChildWatch, asyncio.Task]]) -> None:
    for _, task in watches:
        task.cancel()
    await asyncio.gather(*(task for _, task in watches), return_exceptions=True)
    for watch, _ in watches:
        await watch.stop()
