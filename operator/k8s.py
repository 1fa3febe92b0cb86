"""The only module of the operator that talks to the Kubernetes API.

Requests go out with aiohttp on the event loop, a bounded number at a time, in priority order.
Objects are plain dicts (the renderers' output); paths are built from apiVersion + plural,
so CRDs (RayJob, FineTuneJob) and core kinds go through the same code. Errors are typed:
`NotFound`, `Conflict`/`AlreadyExists`, `Invalid`, `Forbidden`, `ServerError`; the
transient ones (409, 429, 5xx, connection failures) are also `kopf.TemporaryError`, so a
handler that lets them through is retried by kopf with a backoff instead of crashing.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import kopf
import orjson

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
AUTH_REFRESH_SECONDS = 60.0
JSON_PATCH = "application/json-patch+json"


# ----------------------------------------------------------------------------- errors


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when no answer came)."""

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = ""):
        self.status, self.reason, self.message, self.method, self.path = status, reason, message, method, path
        super().__init__(f"{method} {path}: {status} {reason}: {message}".strip())


class TransientKubeError(KubeError, kopf.TemporaryError):
    """Worth retrying: kopf retries the handler after `delay` seconds (with jitter)."""

    default_delay = 2.0

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = ""):
        KubeError.__init__(self, status, reason, message, method=method, path=path)
        kopf.TemporaryError.__init__(self, str(self), delay=self.default_delay * (1 + random.random() / 2))


class NotFound(KubeError):
    """404."""


class Invalid(KubeError):
    """400 or 422: the request itself is wrong; retrying will not help."""


class Forbidden(KubeError):
    """401 or 403: RBAC does not allow it (see the chart's ClusterRole)."""


class Conflict(TransientKubeError):
    """409: someone else changed the object; re-read and retry."""

    default_delay = 1.0


class AlreadyExists(Conflict):
    """409 on create: an object with that name exists."""


class ServerError(TransientKubeError):
    """429, 5xx or no answer at all."""

    default_delay = 3.0


def error_for(status: int, reason: str, message: str, *, method: str = "", path: str = "") -> KubeError:
    """The typed exception for an HTTP status."""
    kwargs = {"method": method, "path": path}
    if status == 404:
        return NotFound(status, reason, message, **kwargs)
    if status == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
        return cls(status, reason, message, **kwargs)
    if status in (400, 422):
        return Invalid(status, reason, message, **kwargs)
    if status in (401, 403):
        return Forbidden(status, reason, message, **kwargs)
    if status == 429 or status >= 500 or status == 0:
        return ServerError(status, reason, message, **kwargs)
    return KubeError(status, reason, message, **kwargs)


# ----------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class Resource:
    """Where objects of one kind live in the API."""

    api_version: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}" if self.namespaced and namespace else f"{base}/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


KINDS: dict[str, Resource] = {
    "ConfigMap": Resource("v1", "configmaps"),
    "Secret": Resource("v1", "secrets"),
    "Service": Resource("v1", "services"),
    "ServiceAccount": Resource("v1", "serviceaccounts"),
    "Pod": Resource("v1", "pods"),
    "PersistentVolumeClaim": Resource("v1", "persistentvolumeclaims"),
    "Event": Resource("v1", "events"),
    "Role": Resource("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Job": Resource("batch/v1", "jobs"),
    "Deployment": Resource("apps/v1", "deployments"),
    "HorizontalPodAutoscaler": Resource("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": Resource("policy/v1", "poddisruptionbudgets"),
    "RayJob": Resource("ray.io/v1", "rayjobs"),
    "RayCluster": Resource("ray.io/v1", "rayclusters"),
    "FineTuneJob": Resource("kubetune.io/v1alpha1", "finetunejobs"),
    "ModelDeployment": Resource("kubetune.io/v1alpha1", "modeldeployments"),
    "ServiceMonitor": Resource("monitoring.coreos.com/v1", "servicemonitors"),
    "PrometheusRule": Resource("monitoring.coreos.com/v1", "prometheusrules"),
    "ScaledObject": Resource("keda.sh/v1alpha1", "scaledobjects"),
    "CronJob": Resource("batch/v1", "cronjobs"),
}


def resource_for(kind: str, api_version: str | None = None) -> Resource:
    """The Resource of a kind we manage; KeyError names the kind when it is unknown."""
    try:
        res = KINDS[kind]
    except KeyError:
        raise KeyError(f"kind {kind!r} is not known to kubetune.operator.k8s.KINDS") from None
    if api_version and api_version != res.api_version:
        return Resource(api_version, res.plural, res.namespaced)
    return res


# ----------------------------------------------------------------------------- client


def _drop_path(doc: dict[str, Any], path: tuple[str, ...]) -> None:
    """Remove doc[path[0]][path[1]]... in place (copying the dicts on the way) if present."""
    if not path or not isinstance(doc, dict) or path[0] not in doc:
        return
    if len(path) == 1:
        del doc[path[0]]
        return
    inner = dict(doc[path[0]]) if isinstance(doc[path[0]], dict) else doc[path[0]]
    doc[path[0]] = inner
    _drop_path(inner, path[1:])


def load_api_client(kubeconfig: str | None = None) -> Any:
    """A kubernetes ApiClient: in-cluster service account, else KUBECONFIG / ~/.kube/config."""
    import kubernetes

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=config)
        return kubernetes.client.ApiClient(config)
    return kubernetes.config.new_client_from_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"))


DEFER_WINDOW_SECONDS = 0.05
"""Non-urgent requests wait until no urgent one was queued for this long..."""
MAX_DEFER_SECONDS = 2.0
"""...but never longer than this, so a steady stream of new jobs cannot starve status writes."""


class _RequestQueue:
    """Requests by priority, where urgent ones (priority 0) hold the others back for a moment.

    When hundreds of FineTuneJobs arrive at once, the user waits for their RayJobs; the
    ConfigMaps, RBAC, status writes and Events of the first jobs would otherwise take turns
    with the RayJobs of the later ones (and every answer and watch event they cause costs the
    same event loop). So non-urgent requests go out once urgent ones stop coming for
    `defer_window` seconds, or after `max_defer` seconds of waiting at the latest. Without a
    burst the window costs a non-urgent request at most `defer_window`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, defer_window: float, max_defer: float):
        self._loop = loop
        self._urgent: collections.deque = collections.deque()
        self._bulk: list[tuple[int, int, float, Any, asyncio.Future]] = []
        self._seq = itertools.count()
        self._last_urgent = float("-inf")
        self._defer_window, self._max_defer = defer_window, max_defer
        self._wakeup = asyncio.Event()

    def put(self, priority: int, args: Any, future: asyncio.Future) -> None:
        now = self._loop.time()
        if priority <= 0:
            self._urgent.append((args, future))
            self._last_urgent = now
        else:
            heapq.heappush(self._bulk, (priority, next(self._seq), now, args, future))
        self._wakeup.set()

    async def get(self) -> tuple[Any, asyncio.Future]:
        while True:
            if self._urgent:
                return self._urgent.popleft()
            timeout = None
            if self._bulk:
                now = self._loop.time()
                release = min(self._last_urgent + self._defer_window, self._bulk[0][2] + self._max_defer)
                if now >= release:
                    _, _, _, args, future = heapq.heappop(self._bulk)
                    return args, future
                timeout = release - now
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    def drain(self) -> list[asyncio.Future]:
        futures = [f for _, f in self._urgent] + [item[-1] for item in self._bulk]
        self._urgent.clear()
        self._bulk.clear()
        return futures


def _drop_connections(session: Any) -> None:
    """Close a session whose event loop is gone (aiohttp's own close needs that loop)."""
    if session.closed:
        return
    try:
        session.connector._close()  # noqa: SLF001 - the synchronous part of connector.close()
    except RuntimeError:  # transports of a closed loop: nothing left to close
        pass


class KubeApi:
    """Async CRUD over plain dicts, plus idempotent apply-by-name and discovery checks.

    Requests go out with aiohttp on the caller's event loop (no thread pool: threads doing
    HTTP fight the event loop for the GIL, which at hundreds of jobs costs more than the
    requests). Credentials come from the `kubernetes` client's configuration (in-cluster or
    kubeconfig); bearer tokens are re-read every AUTH_REFRESH_SECONDS, so rotated
    service-account tokens keep working.
    """

    def __init__(self, api_client: Any = None, *, threads: int = 16, timeout: float = 30.0,
                 defer_window: float = DEFER_WINDOW_SECONDS, max_defer: float = MAX_DEFER_SECONDS):
        self._threads = threads  # requests in flight at once (KUBETUNE_API_THREADS)
        self._api_client = api_client
        self._queue: _RequestQueue | None = None
        self._queue_loop: asyncio.AbstractEventLoop | None = None
        self._defer_window, self._max_defer = defer_window, max_defer
        self._session: Any = None
        self._ssl: Any = None
        self._workers: list[asyncio.Task] = []
        self._timeout = timeout
        self._discovery: dict[str, set[str] | None] = {}
        self._discovering: dict[str, asyncio.Future] = {}
        self._auth: tuple[float, dict[str, str]] | None = None
        self._host = ""
        self._watch_session: Any = None
        self._watch_loop: asyncio.AbstractEventLoop | None = None

    @property
    def api_client(self) -> Any:
        """The `kubernetes` ApiClient whose configuration (host, credentials, TLS) we use."""
        if self._api_client is None:
            self._api_client = load_api_client()
        return self._api_client

    async def stop_workers(self) -> None:
        """Stop the queue workers of the running loop (call before the loop ends)."""
        workers, queue, self._workers, self._queue = self._workers, self._queue, [], None
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for future in queue.drain() if queue is not None else ():  # callers still waiting get an answer
            if not future.done():
                future.set_exception(ServerError(0, "Stopped", "the operator is stopping"))
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    def close(self) -> None:
        for task in self._workers:
            task.cancel()
        watch_session, self._watch_session = self._watch_session, None
        if watch_session is not None:
            _drop_connections(watch_session)
        session, self._session = self._session, None
        if session is not None and not session.closed:
            loop = self._queue_loop
            if loop is not None and not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(session.close())
            else:  # its loop is gone (or busy elsewhere): drop the connections without it
                _drop_connections(session)
        if self._api_client is not None:
            self._api_client.close()

    # ------------------------------------------------------------------ raw

    def _auth_headers(self) -> dict[str, str]:
        """Credentials headers, re-read at most every AUTH_REFRESH_SECONDS.

        Re-reading runs the kubernetes client's refresh hook (rotated service-account
        tokens, exec plugins), which costs more than a request: not on every call.
        """
        now = time.monotonic()
        if self._auth is None or now - self._auth[0] > AUTH_REFRESH_SECONDS:
            config = self.api_client.configuration
            headers = {}
            for setting in config.auth_settings().values():
                if setting.get("in") == "header" and setting.get("value"):
                    headers[setting["key"]] = setting["value"]
            self._auth = (now, headers)
            self._host = config.host.rstrip("/")
        return self._auth[1]

    def _ssl_context(self) -> Any:
        import ssl

        config = self.api_client.configuration
        if not config.host.startswith("https"):
            return None
        if not config.verify_ssl:
            return False
        context = ssl.create_default_context(cafile=config.ssl_ca_cert)
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
        return context

    def _new_session(self) -> Any:
        import aiohttp

        self._ssl = self._ssl_context()
        connector = aiohttp.TCPConnector(limit=self._threads, ssl=self._ssl if self._ssl is not None else True)
        return aiohttp.ClientSession(
            base_url=None, connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout),
            json_serialize=json.dumps, skip_auto_headers=("User-Agent",),
        )

    async def _request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                       content_type: str = "application/json") -> Any:
        import aiohttp

        headers = {"Accept": "application/json", **self._auth_headers()}  # sets self._host
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = orjson.dumps(body)
        url = self._host + path
        try:
            async with self._session.request(method, url, params=query or None, data=data, headers=headers) as resp:
                raw = await resp.read()
                status, http_reason = resp.status, resp.reason
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:  # no answer at all
            raise error_for(0, type(exc).__name__, str(exc) or type(exc).__name__, method=method, path=path) from exc
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        if not 200 <= status < 300:
            reason = payload.get("reason") if isinstance(payload, dict) else None
            message = payload.get("message") if isinstance(payload, dict) else None
            raise error_for(status, reason or http_reason or "", message or raw.decode(errors="replace")[:500],
                            method=method, path=path)
        return payload

    async def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                   content_type: str = "application/json", *, priority: int = 1) -> Any:
        """One API call; lower `priority` values are sent first, and 0 is urgent.

        Under load (hundreds of jobs created at once) the queue decides what the user waits
        for: workloads (priority 0) go first; bookkeeping objects, status and Events wait
        while urgent requests keep coming (see `_RequestQueue`).
        """
        loop = asyncio.get_running_loop()
        if self._queue is None or self._queue_loop is not loop:
            self._start_workers(loop)
        future: asyncio.Future = loop.create_future()
        self._queue.put(priority, (method, path, body, query, content_type), future)
        return await future

    def _start_workers(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._session is not None and self._queue_loop is not loop:
            _drop_connections(self._session)  # bound to a previous loop
            self._session = None
        self._queue = _RequestQueue(loop, defer_window=self._defer_window, max_defer=self._max_defer)
        self._queue_loop = loop
        self._session = self._new_session()
        self._workers = [loop.create_task(self._worker()) for _ in range(self._threads)]

    async def _worker(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            args, future = await queue.get()
            if future.cancelled():
                continue
            try:
                result = await self._request(*args)
            except Exception as exc:
                if not future.cancelled():
                    future.set_exception(exc)
            else:
                if not future.cancelled():
                    future.set_result(result)

    async def watch(self, res: Resource, namespace: str | None, *, resource_version: str,
                    label_selector: str | None = None, timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch stream (`{"type", "object"}`), until the server ends it.

        Not queued: a watch is one long request and must not hold one of the request
        workers. It has its own connections. Failures raise KubeError like any call; an
        `ERROR` event (410 Gone, for one) is yielded for the caller to decide.
        """
        import aiohttp

        headers = {"Accept": "application/json", **self._auth_headers()}
        query = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        if label_selector:
            query["labelSelector"] = label_selector
        loop = asyncio.get_running_loop()
        if self._watch_session is not None and (self._watch_session.closed or self._watch_loop is not loop):
            _drop_connections(self._watch_session)  # closed, or bound to a previous loop
            self._watch_session = None
        if self._watch_session is None:
            self._watch_loop = loop
            context = self._ssl_context()
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=context if context is not None else True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=timeout_seconds + 30),
                skip_auto_headers=("User-Agent",))
        path = res.path(namespace)
        try:
            async with self._watch_session.get(self._host + path, params=query, headers=headers) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    try:
                        payload = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        payload = {}
                    raise error_for(resp.status, payload.get("reason") or resp.reason or "",
                                    payload.get("message") or raw.decode(errors="replace")[:500], method="WATCH", path=path)
                async for line in resp.content:
                    if line.strip():
                        yield orjson.loads(line)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise error_for(0, type(exc).__name__, str(exc) or type(exc).__name__, method="WATCH", path=path) from exc

    # ------------------------------------------------------------------ verbs

    async def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.call("GET", res.path(namespace, name))
        except NotFound:
            return None

    async def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        try:
            payload = await self.call("GET", res.path(namespace), query=query)
        except NotFound:
            return []  # the kind is not installed: nothing of it exists
        return list(payload.get("items") or [])

    async def create(self, obj: dict[str, Any], *, priority: int = 1) -> dict[str, Any]:
        res = resource_for(obj["kind"], obj.get("apiVersion"))
        namespace = obj.get("metadata", {}).get("namespace")
        return await self.call("POST", res.path(namespace), body=obj, priority=priority)

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: Any, *,
                    subresource: str | None = None, content_type: str = MERGE_PATCH, priority: int = 1) -> dict[str, Any]:
        return await self.call("PATCH", res.path(namespace, name, subresource), body=patch, content_type=content_type,
                               priority=priority)

    async def patch_status(self, res: Resource, namespace: str | None, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource."""
        return await self.patch(res, namespace, name, {"status": status}, subresource="status")

    async def delete(self, res: Resource, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        """Delete; False if it was already gone."""
        try:
            await self.call("DELETE", res.path(namespace, name), body={"propagationPolicy": propagation})
            return True
        except NotFound:
            return False

    async def apply(self, obj: dict[str, Any], *, priority: int = 1,
                    create_only: tuple[tuple[str, ...], ...] = ()) -> tuple[dict[str, Any], bool]:
        """Create the object, or merge-patch it to the desired state if it exists: (object, created).

        Names are deterministic, so repeating an apply (a retried handler, a restarted
        operator) never creates a duplicate. Only the fields we render are patched;
        `create_only` paths (e.g. ("spec", "suspend") when Kueue owns it) are set at
        creation and never patched afterwards.
        """
        try:
            return await self.create(obj, priority=priority), True
        except AlreadyExists:
            pass
        res = resource_for(obj["kind"], obj.get("apiVersion"))
        meta = obj["metadata"]
        patch = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        for path in create_only:
            _drop_path(patch, path)
        patch["metadata"] = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
        return await self.patch(res, meta.get("namespace"), meta["name"], patch, priority=priority), False

    async def served_resources(self, api_version: str) -> set[str] | None:
        """Plurals served under a group/version (cached), or None when it is not served.

        Concurrent callers share one discovery request (hundreds of jobs arrive at once).
        """
        if self._discovery.get(api_version) is not None:
            return self._discovery[api_version]
        pending = self._discovering.get(api_version)
        if pending is not None and pending.get_loop() is asyncio.get_running_loop():
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._discovering[api_version] = future
        try:
            plurals = await self._discover(api_version)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody else has to
            raise
        else:
            future.set_result(plurals)
            return plurals
        finally:
            self._discovering.pop(api_version, None)

    async def _discover(self, api_version: str) -> set[str] | None:
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            payload = await self.call("GET", path)
        except NotFound:
            self._discovery[api_version] = None  # re-checked next time: it may get installed
            return None
        plurals = {r["name"] for r in payload.get("resources", []) if "/" not in r["name"]}
        self._discovery[api_version] = plurals
        return plurals

    async def has_resource(self, api_version: str, plural: str) -> bool:
        plurals = await self.served_resources(api_version)
        return plurals is not None and plural in plurals


_shared_api: KubeApi | None = None


def api_of(memo: Any) -> KubeApi:
    """The operator's KubeApi from kopf's memo (main.py puts it at `memo.api`).

    Handlers started without main.py (tests that run kopf on a subset of handlers) share one
    process-wide client instead.
    """
    global _shared_api
    client = getattr(memo, "api", None) if memo is not None else None
    if isinstance(client, KubeApi):
        return client
    if _shared_api is None:
        _shared_api = KubeApi()
    return _shared_api


def reset_shared_api() -> None:
    """Close the process-wide client (tests start operators against other emulators)."""
    global _shared_api
    if _shared_api is not None:
        _shared_api.close()
        _shared_api = None
