"""A Kubernetes API emulator good enough for kopf, kubectl and the kubernetes client.

kmock's `KubernetesEmulator` serves discovery and an in-memory object store, but (measured,
see ARCHITECTURE.md) it sets no uid/resourceVersion/generation/creationTimestamp, replays
everything on every watch, answers a failed JSON-patch `test` with 500 and has no status
subresource, garbage collection or Table output. kopf cannot run its handler cycle against
that, so this subclass owns the object semantics for resource requests and keeps kmock for
the HTTP server, request parsing and discovery.

What it does, like the real API server: metadata bookkeeping (uid, resourceVersion bumped on
every write, generation on spec changes only, creationTimestamp), merge / strategic-merge /
JSON patches (a failed `test` answers 422), PUT with optimistic concurrency (409), status
subresource semantics, finalizers and deletionTimestamp, owner-reference garbage collection
(background cascade; an object created with only dangling owners is collected at once), watches that start from a resourceVersion (410 Gone when too old),
label and field selectors, `as=Table` responses with the CRD's printer columns (so
`kubectl get ftj` shows them), apiVersion/kind on lists.

Stored objects are never mutated in place (every write builds a new dict), so reads and
watch events share them without copies; the test accessors hand out deep copies.

kmock's path parser also fails on `/api/v1/namespaces[/NAME]` (it reads "namespaces" as the
namespace prefix); those requests are parsed here.

What it does not do: validation against schemas, CRD defaulting (send the fields you rely on),
admission, server-side apply, deletecollection, controllers (tests simulate KubeRay and the
pod lifecycle by PATCHing status over HTTP). Fault injection
(`fail_next`, `drop_watches`) lets tests exercise retries.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime as dt
import functools
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import orjson
import yaml
from kmock._internal import apps, enums, rendering

HISTORY_LIMIT = 100_000
"""Watch events kept per resource; older resourceVersions get 410 Gone like a compacted etcd."""

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Kind:
    """What the emulator knows about one resource type (from a CRD or built in)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)


BUILTIN_KINDS = [
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, subresources=("status",), short_names=("ns",)),
    Kind("", "v1", "pods", "Pod", subresources=("status",), short_names=("po",)),
    Kind("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "services", "Service", subresources=("status",), short_names=("svc",)),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Kind("", "v1", "events", "Event", short_names=("ev",)),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", subresources=("status",), short_names=("pvc",)),
    Kind("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    Kind("apps", "v1", "deployments", "Deployment", subresources=("status", "scale"), short_names=("deploy",)),
    Kind("batch", "v1", "jobs", "Job", subresources=("status",)),
    Kind("batch", "v1", "cronjobs", "CronJob", subresources=("status",), short_names=("cj",)),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", subresources=("status",), short_names=("hpa",)),
    Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", subresources=("status",), short_names=("pdb",)),
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    Kind(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
        namespaced=False, subresources=("status",), short_names=("crd",),
    ),
]


def kinds_from_crd(crd: dict[str, Any]) -> list[Kind]:
    """One Kind per served version of a CustomResourceDefinition manifest."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        out.append(
            Kind(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                subresources=tuple(sorted((version.get("subresources") or {}).keys())),
                short_names=tuple(names.get("shortNames", ())),
                categories=tuple(names.get("categories", ())),
                printer_columns=list(version.get("additionalPrinterColumns", ())),
            )
        )
    return out


def load_crd_files(*paths: Path) -> list[dict[str, Any]]:
    """CRD documents from YAML files (multi-document files allowed, non-CRDs skipped).

    Parsed once per process and shared read-only: the KubeRay CRDs are 40k lines.
    """
    return [doc for path in paths for doc in _load_crd_file(str(Path(path).resolve()))]


@functools.lru_cache(maxsize=None)
def _load_crd_file(path: str) -> tuple[dict[str, Any], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(
        doc for doc in yaml.load_all(Path(path).read_text(), Loader=loader)
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
    )


# ----------------------------------------------------------------------------- pure helpers


class ApiError(Exception):
    """An API error answered as a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
            "details": self.details,
        }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches: lists are replaced).

    Returns a new object; neither argument is modified. Subtrees the patch does not touch
    are shared with `target` (stored objects are never mutated in place), so patching the
    status of a large object copies the status, not the object.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_patch(result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    return result


_SELECTOR_TERM = re.compile(r"^\s*(!?)([A-Za-z0-9._/-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*))?\s*$")
_SET_TERM = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    # Commas inside `in (a, b)` do not separate terms.
    terms, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        terms.append(current)
    return terms


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Equality, inequality, existence and set-based label selectors."""
    if not selector:
        return True
    for term in _split_selector(selector):
        if m := _SET_TERM.match(term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (labels.get(key) in values if key in labels else False):
                if op == "in" or key in labels:
                    return False
            continue
        m = _SELECTOR_TERM.match(term)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        negate, key, op, value = m.groups()
        if op is None:
            if (key in labels) == bool(negate):
                return False
        elif op in ("=", "=="):
            if labels.get(key) != value:
                return False
        elif labels.get(key) == value:
            return False
    return True


def field_selector_matches(selector: str | None, obj: dict[str, Any]) -> bool:
    """The field selectors clients use: metadata.name and metadata.namespace (= and !=)."""
    if not selector:
        return True
    for term in selector.split(","):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = m.groups()
        actual: Any = obj
        for part in path.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if (str(actual) == value) != (op != "!="):
            return False
    return True


def jsonpath_value(obj: Any, path: str) -> Any:
    """The simple `.a.b.c` JSONPaths that printer columns use."""
    value = obj
    for part in path.strip().lstrip(".").split("."):
        if not part:
            continue
        value = value.get(part) if isinstance(value, dict) else None
    return value


def human_age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((dt.datetime.now(dt.UTC) - created).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


# ----------------------------------------------------------------------------- the emulator


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    reason: str
    after_write: bool = False


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the object semantics of a real API server (see module doc)."""

    _kinds: dict[tuple[str, str, str], Kind] = attrs.field(factory=dict, init=False)
    _store: dict[tuple[tuple[str, str, str], str | None, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    # Secondary indexes over _store (kept by _put/_drop): objects by kind, and which key holds
    # a uid. Lists, watches and owner checks would otherwise scan every object of every kind,
    # which at thousands of objects made the emulator the slowest part of a benchmark.
    _by_kind: dict[tuple[str, str, str], dict[tuple[str | None, str], dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _uids: dict[str, tuple[tuple[str, str, str], str | None, str]] = attrs.field(factory=dict, init=False)
    _history: dict[tuple[str, str, str], collections.deque] = attrs.field(factory=dict, init=False)
    _watchers: dict[tuple[str, str, str], set[asyncio.Queue]] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=1000, init=False)
    _faults: list[_Fault] = attrs.field(factory=list, init=False)
    _state_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _changed: asyncio.Condition | None = attrs.field(default=None, init=False)
    _resource_refs: dict[tuple[str, str, str], Any] = attrs.field(factory=dict, init=False)
    request_log: list[tuple[str, str, int]] = attrs.field(factory=list, init=False)
    """(method, path, status) of every resource request, for assertions on retries."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind in BUILTIN_KINDS:
            self.register_kind(kind)

    # ------------------------------------------------------------------ configuration

    def register_kind(self, kind: Kind) -> None:
        """Serve a resource type (in discovery and for object requests)."""
        self._kinds[kind.key] = kind
        self._history.setdefault(kind.key, collections.deque(maxlen=HISTORY_LIMIT))
        self._watchers.setdefault(kind.key, set())
        self.resources[kmock.resource(kind.group, kind.version, kind.plural)] = kmock.ResourceInfo(
            namespaced=kind.namespaced,
            kind=kind.kind,
            singular=kind.kind.lower(),
            verbs=set(VERBS),
            shortnames=set(kind.short_names),
            categories=set(kind.categories),
            subresources=set(kind.subresources),
        )

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CRD's kinds and store the CRD object itself, as installing it would."""
        for kind in kinds_from_crd(crd):
            self.register_kind(kind)
        crd_kind = self._kinds[("apiextensions.k8s.io", "v1", "customresourcedefinitions")]
        # Shallow: the (large) schema is shared read-only with the cached parse.
        obj = {**crd, "metadata": dict(crd.get("metadata") or {})}
        obj.setdefault("apiVersion", "apiextensions.k8s.io/v1")
        obj.setdefault("kind", "CustomResourceDefinition")
        self._stamp_new(obj, crd_kind)
        self._put((crd_kind.key, None, obj["metadata"]["name"]), obj)

    def unregister_kind(self, group: str, version: str, plural: str) -> None:
        """Remove a resource type from discovery (e.g. simulate a cluster without KubeRay)."""
        self._kinds.pop((group, version, plural), None)
        self.resources.pop(kmock.resource(group, version, plural), None)

    def fail_next(self, method: str, path: str, status: int = 500, times: int = 1, reason: str = "",
                  after_write: bool = False) -> None:
        """Answer the next `times` requests whose method matches and path matches the regex with an error.

        `after_write`: the request takes effect first (as when etcd committed but the answer was
        lost to a timeout or a proxy), so a client's retry meets the object it already wrote.
        """
        self._faults.append(_Fault(method.upper(), re.compile(path), status, times,
                                   reason or _REASONS.get(status, "InternalError"), after_write))

    def drop_watches(self) -> int:
        """End every open watch stream (as an API server restart or a load balancer would)."""
        dropped = 0
        for queues in self._watchers.values():
            for queue in list(queues):
                queue.put_nowait(None)
                dropped += 1
        return dropped

    # ------------------------------------------------------------------ state accessors

    def get_object(self, plural: str, namespace: str | None, name: str, group: str | None = None) -> dict[str, Any] | None:
        """A deep copy of a stored object (by plural, optionally disambiguated by group)."""
        for (key, ns, nm), obj in list(self._store.items()):
            if key[2] == plural and (group is None or key[0] == group) and ns == namespace and nm == name:
                return copy.deepcopy(obj)
        return None

    def list_objects(self, plural: str, namespace: str | None = None, group: str | None = None) -> list[dict[str, Any]]:
        """Deep copies of the stored objects of a plural (all namespaces if namespace is None)."""
        return [
            copy.deepcopy(obj)
            for (key, ns, _), obj in sorted(list(self._store.items()), key=lambda kv: (kv[0][1] or "", kv[0][2]))
            if key[2] == plural and (group is None or key[0] == group) and (namespace is None or ns == namespace)
        ]

    # ------------------------------------------------------------------ request dispatch

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's path parser reads /api/v1/namespaces[/NAME] as a namespace prefix and fails
        # or misroutes; parse those paths ourselves. Requests for the kinds served here are
        # parsed here too (kmock's generic parser cost more than the request itself); the
        # rest (discovery) goes to kmock.
        path = raw_request.path
        match = _NAMESPACE_PATH.match(path)
        if match is not None:
            resource, namespace, name, subresource = kmock.resource("", "v1", "namespaces"), None, match.group(1), match.group(2)
        else:
            match = _RESOURCE_PATH.match(path)
            key = (match.group("group") or "", match.group("version") or match.group("core"), match.group("plural")) if match else None
            if key is None or key not in self._kinds:
                return await super().__call__(raw_request)
            resource = self._resource_refs.get(key) or self._resource_refs.setdefault(key, kmock.resource(*key))
            namespace, name, subresource = match.group("namespace"), match.group("name"), match.group("sub")
        body = await raw_request.read()
        method = enums.method(raw_request.method)
        data = None
        if body and method in (enums.method.PUT,):  # creates and patches parse the body themselves
            try:
                data = orjson.loads(body)
            except ValueError:
                pass
        query = dict(raw_request.query)
        if method == enums.method.GET and query.get("watch") in ("true", "1"):
            action = enums.action.WATCH
        elif name is None:
            action = enums.action.LIST if method == enums.method.GET else enums.action.CREATE
        else:
            action = {enums.method.GET: enums.action.FETCH, enums.method.PATCH: enums.action.UPDATE,
                      enums.method.DELETE: enums.action.DELETE}.get(method)
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
            params=query, headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
            data=data, body=body, text=body.decode(errors="replace"), action=action,
            resource=resource, namespace=namespace, name=name, subresource=subresource,
        )
        self._requests.append(request)
        return await self._handle(request)

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and request.resource is not None and request.resource.group == "":
            payload["groupVersion"] = request.resource.version  # core is "v1", not "/v1"
        if isinstance(payload, dict):
            for entry in payload.get("resources", []):
                if "/" in entry["name"]:  # subresources carry no short names or categories
                    entry["shortNames"], entry["categories"] = [], []
                    entry["verbs"] = ["get", "patch", "update"]
        return payload

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        path = request.url.path
        fault = self._take_fault(request.method.value, path, after_write=False)
        if fault is not None:
            return self._fault_response(request, path, fault)
        resource = request.resource
        if resource is None or resource.plural is None or (resource.group, resource.version, resource.plural) not in self._kinds:
            if resource is not None and resource.plural is not None:
                err = ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
                return _json_response(err.status(), status=404)
            # Discovery and anything else: kmock's own routing (skipping its object store).
            return await apps.RawHandler._handle(self, request)
        kind = self._kinds[(resource.group, resource.version, resource.plural)]
        try:
            if request.action == enums.action.WATCH:
                return await self._watch(request, kind)
            async with self._state_lock:
                payload, status = self._dispatch(request, kind)
        except ApiError as err:
            self.request_log.append((request.method.value, path, err.code))
            return _json_response(err.status(), status=err.code)
        fault = self._take_fault(request.method.value, path, after_write=True)
        if fault is not None:  # the change is stored, the client hears an error
            return self._fault_response(request, path, fault)
        self.request_log.append((request.method.value, path, status))
        if _wants_table(request) and request.method.value == "GET":
            payload = self._as_table(kind, payload)
        return _json_response(payload, status=status)

    def _take_fault(self, method: str, path: str, *, after_write: bool) -> _Fault | None:
        """The next pending fault of this kind for the request, counted as used."""
        for fault in self._faults:
            if fault.remaining > 0 and fault.after_write == after_write and fault.method == method and fault.pattern.search(path):
                fault.remaining -= 1
                return fault
        return None

    def _fault_response(self, request: rendering.Request, path: str, fault: _Fault) -> aiohttp.web.StreamResponse:
        self.request_log.append((request.method.value, path, fault.status))
        err = ApiError(fault.status, fault.reason, f"injected fault for {request.method.value} {path}")
        return _json_response(err.status(), status=fault.status)

    def _dispatch(self, request: rendering.Request, kind: Kind) -> tuple[dict[str, Any], int]:
        method = request.method.value
        ns = request.namespace if kind.namespaced else None
        if kind.namespaced and request.name is not None and ns is None:
            raise ApiError(404, "NotFound", f"{kind.plural} is namespaced: use /namespaces/NS/{kind.plural}/NAME")
        sub = request.subresource
        if sub and sub not in kind.subresources:
            raise ApiError(404, "NotFound", f"{kind.plural} has no subresource {sub!r}")
        if method == "GET" and request.name is None:
            return self._list(request, kind, ns), 200
        if method == "GET":
            return self._existing(kind, ns, request.name), 200
        if method == "POST" and request.name is None:
            return self._create(request, kind, ns), 201
        if method == "PATCH" and request.name is not None:
            return self._patch(request, kind, ns), 200
        if method == "PUT" and request.name is not None:
            return self._replace(request, kind, ns), 200
        if method == "DELETE" and request.name is not None:
            return self._delete(kind, ns, request.name), 200
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    # ------------------------------------------------------------------ verbs

    def _existing(self, kind: Kind, ns: str | None, name: str) -> dict[str, Any]:
        obj = self._store.get((kind.key, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found',
                           {"name": name, "group": kind.group, "kind": kind.plural})
        return obj

    def _list(self, request: rendering.Request, kind: Kind, ns: str | None) -> dict[str, Any]:
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        of_kind = self._by_kind.get(kind.key, {})
        items = [
            obj
            for (obj_ns, _), obj in sorted(of_kind.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
            if (ns is None or obj_ns == ns)
            and label_selector_matches(labels, obj["metadata"].get("labels") or {})
            and field_selector_matches(fields, obj)
        ]
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _stamp_new(self, obj: dict[str, Any], kind: Kind) -> None:
        meta = obj.setdefault("metadata", {})
        self._rv += 1
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(self._rv)
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)

    def _create(self, request: rendering.Request, kind: Kind, ns: str | None) -> dict[str, Any]:
        try:
            obj = orjson.loads(request.body) if request.body else None  # a private copy, parsed once
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            while True:  # a generated name is unique (the real server retries a few times too)
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if (kind.key, ns or meta.get("namespace"), meta["name"]) not in self._store:
                    break
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        if kind.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and ns and body_ns != ns:
                raise ApiError(400, "BadRequest", f"the namespace of the object ({body_ns}) does not match the namespace on the request ({ns})")
            ns = ns or body_ns
            if not ns:
                raise ApiError(400, "BadRequest", f"{kind.plural} is namespaced: a namespace is required")
            meta["namespace"] = ns
        if (kind.key, ns, name) in self._store:
            raise ApiError(409, "AlreadyExists", f'{kind.plural}.{kind.group or "core"} "{name}" already exists',
                           {"name": name, "group": kind.group, "kind": kind.plural})
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if "status" in kind.subresources:
            obj.pop("status", None)
        self._stamp_new(obj, kind)
        if request.params.get("dryRun"):
            return obj
        self._put((kind.key, ns, name), obj)
        self._emit(kind, "ADDED", obj)
        refs = meta.get("ownerReferences") or []
        if refs and not any(self._uid_exists(ref.get("uid")) for ref in refs):
            # Like the garbage collector: a dependent whose owners are all gone is deleted.
            self._delete(kind, ns, name)
        return obj

    def _apply_patch(self, current: dict[str, Any], request: rendering.Request) -> dict[str, Any]:
        content_type = request.headers.get("Content-Type", request.headers.get("content-type", "")).split(";")[0].strip()
        try:
            body = orjson.loads(request.body or b"null")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the patch is not valid JSON: {exc}")
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                return jsonpatch.apply_patch(current, body)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}")
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {exc}")
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json", "application/json"):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            return merge_patch(current, body)
        if content_type == "application/apply-patch+yaml":
            raise ApiError(415, "UnsupportedMediaType", "server-side apply is not emulated; use a merge patch")
        raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")

    def _patch(self, request: rendering.Request, kind: Kind, ns: str | None) -> dict[str, Any]:
        current = self._existing(kind, ns, request.name)
        desired = self._apply_patch(current, request)
        return self._write(kind, ns, request.name, current, desired, request.subresource, check_rv=True)

    def _replace(self, request: rendering.Request, kind: Kind, ns: str | None) -> dict[str, Any]:
        current = self._existing(kind, ns, request.name)
        desired = request.data
        if not isinstance(desired, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        rv = (desired.get("metadata") or {}).get("resourceVersion")
        if not rv:
            raise ApiError(422, "Invalid", "metadata.resourceVersion: Invalid value: 0: must be specified for an update")
        return self._write(kind, ns, request.name, current, copy.deepcopy(desired), request.subresource, check_rv=True)

    def _write(
        self,
        kind: Kind,
        ns: str | None,
        name: str,
        current: dict[str, Any],
        desired: dict[str, Any],
        subresource: str | None,
        check_rv: bool,
    ) -> dict[str, Any]:
        old_meta = current["metadata"]
        # `desired` may share subtrees with `current` (merge_patch): copy what is changed here.
        new_meta = desired["metadata"] = dict(desired.get("metadata") or {})
        if check_rv and new_meta.get("resourceVersion") not in (None, old_meta["resourceVersion"]):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural}.{kind.group or "core"} "{name}": '
                           "the object has been modified; please apply your changes to the latest version and try again")
        if subresource == "status":
            # Only status changes through /status.
            result = {**current, "metadata": dict(old_meta)}
            if "status" in desired:
                result["status"] = desired["status"]
            else:
                result.pop("status", None)
        else:
            result = desired
            if "status" in kind.subresources:
                # The main resource ignores status changes.
                if "status" in current:
                    result["status"] = current["status"]  # shared: never mutated in place
                else:
                    result.pop("status", None)
            # Identity fields are the server's.
            for key in ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"):
                if key in old_meta:
                    new_meta[key] = old_meta[key]
                else:
                    new_meta.pop(key, None)
            if old_meta.get("deletionTimestamp"):
                # No new finalizers on an object being deleted.
                new_meta["finalizers"] = [f for f in new_meta.get("finalizers") or [] if f in (old_meta.get("finalizers") or [])]
            if _spec_part(result) != _spec_part(current):
                new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        result["apiVersion"], result["kind"] = kind.api_version, kind.kind
        result["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if result == current:
            return current  # a no-op write does not bump resourceVersion
        self._rv += 1
        result["metadata"]["resourceVersion"] = str(self._rv)
        if not result["metadata"].get("finalizers"):
            result["metadata"].pop("finalizers", None)
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            self._remove(kind, ns, name, result)
            return result
        self._put((kind.key, ns, name), result)
        self._emit(kind, "MODIFIED", result)
        return result

    def _delete(self, kind: Kind, ns: str | None, name: str) -> dict[str, Any]:
        current = self._existing(kind, ns, name)
        if current["metadata"].get("deletionTimestamp"):
            return current
        if current["metadata"].get("finalizers"):
            result = copy.deepcopy(current)
            self._rv += 1
            result["metadata"]["deletionTimestamp"] = now_rfc3339()
            result["metadata"]["deletionGracePeriodSeconds"] = 0
            result["metadata"]["resourceVersion"] = str(self._rv)
            self._put((kind.key, ns, name), result)
            self._emit(kind, "MODIFIED", result)
            return result
        self._rv += 1
        current = copy.deepcopy(current)
        current["metadata"]["resourceVersion"] = str(self._rv)
        self._remove(kind, ns, name, current)
        return current

    def _remove(self, kind: Kind, ns: str | None, name: str, last: dict[str, Any]) -> None:
        self._drop((kind.key, ns, name))
        self._emit(kind, "DELETED", last)
        self._collect_garbage(last["metadata"]["uid"])

    def _collect_garbage(self, owner_uid: str) -> None:
        """Delete the dependents of a removed owner (background cascading deletion)."""
        for (key, ns, name), obj in list(self._store.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in refs) and (key, ns, name) in self._store:
                remaining = [ref for ref in refs if ref.get("uid") != owner_uid]
                live = [ref for ref in remaining if self._uid_exists(ref.get("uid"))]
                if live:
                    continue  # another owner still holds it
                self._delete(self._kinds.get(key) or Kind(*key, kind=obj.get("kind", "")), ns, name)

    def _uid_exists(self, uid: str | None) -> bool:
        return uid in self._uids

    def _put(self, key: tuple[tuple[str, str, str], str | None, str], obj: dict[str, Any]) -> None:
        self._store[key] = obj
        self._by_kind.setdefault(key[0], {})[(key[1], key[2])] = obj
        uid = obj["metadata"].get("uid")
        if uid:
            self._uids[uid] = key

    def _drop(self, key: tuple[tuple[str, str, str], str | None, str]) -> None:
        obj = self._store.pop(key, None)
        self._by_kind.get(key[0], {}).pop((key[1], key[2]), None)
        uid = obj["metadata"].get("uid") if obj else None
        if uid and self._uids.get(uid) == key:
            del self._uids[uid]

    # ------------------------------------------------------------------ watch

    def _emit(self, kind: Kind, event_type: str, obj: dict[str, Any]) -> None:
        snapshot = obj  # stored objects are never mutated in place: every write makes a new one
        rv = int(snapshot["metadata"]["resourceVersion"])
        self._history[kind.key].append((rv, event_type, snapshot))
        watchers = self._watchers[kind.key]
        if watchers:
            event = _Event(event_type, snapshot)  # encoded once, for all watchers that want it
            for queue in watchers:
                queue.put_nowait(event)

    async def _watch(self, request: rendering.Request, kind: Kind) -> aiohttp.web.StreamResponse:
        ns = request.namespace if kind.namespaced else None
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        if request.name is not None:
            fields = ",".join(filter(None, [fields, f"metadata.name={request.name}"]))
        since = request.params.get("resourceVersion") or ""
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        if since and not since.isdigit():
            err = ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}")
            return _json_response(err.status(), status=400)

        def wanted(obj: dict[str, Any]) -> bool:
            return (
                (ns is None or obj["metadata"].get("namespace") == ns)
                and label_selector_matches(labels, obj["metadata"].get("labels") or {})
                and field_selector_matches(fields, obj)
            )

        queue: asyncio.Queue = asyncio.Queue()
        async with self._state_lock:
            if since in ("", "0"):
                initial = [("ADDED", o) for o in self._by_kind.get(kind.key, {}).values()]
            else:
                history = self._history[kind.key]
                if history and len(history) == history.maxlen and int(since) < history[0][0]:
                    initial = [("ERROR", ApiError(410, "Expired", f"too old resource version: {since}").status())]
                else:
                    initial = [(t, o) for rv, t, o in history if rv > int(since)]
            self._watchers[kind.key].add(queue)
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        self.request_log.append(("WATCH", request.url.path, 200))
        try:
            for event_type, obj in initial:
                if event_type == "ERROR" or wanted(obj):
                    await response.write(orjson.dumps({"type": event_type, "object": obj}) + b"\n")
                if event_type == "ERROR":
                    return response
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            while True:
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    break
                if item is None:
                    break  # dropped on purpose
                if wanted(item.obj):
                    await response.write(item.line())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers[kind.key].discard(queue)
        try:
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    # ------------------------------------------------------------------ tables

    def _as_table(self, kind: Kind, payload: dict[str, Any]) -> dict[str, Any]:
        items = payload.get("items") if "items" in payload else [payload]
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}]
        extra = kind.printer_columns or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        for col in extra:
            columns.append({
                "name": col["name"], "type": col.get("type", "string"), "format": col.get("format", ""),
                "description": col.get("description", ""), "priority": col.get("priority", 0),
            })
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for col in extra:
                value = jsonpath_value(obj, col["jsonPath"])
                if col.get("type") == "date":
                    value = human_age(value)
                cells.append(value if value is not None else None)
            rows.append({"cells": cells, "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}})
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "columnDefinitions": columns,
            "rows": rows,
        }


def _json_response(payload: Any, status: int = 200) -> aiohttp.web.Response:
    """orjson instead of aiohttp's json.dumps: serialization was a sixth of the emulator's CPU
    under bench/operator_scale.py (a real API server, written in Go, spends far less)."""
    return aiohttp.web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


class _Event:
    """A watch event as sent: serialized on first use, then shared by every watcher."""

    __slots__ = ("type", "obj", "_line")

    def __init__(self, event_type: str, obj: dict[str, Any]):
        self.type, self.obj, self._line = event_type, obj, None

    def line(self) -> bytes:
        if self._line is None:
            self._line = orjson.dumps({"type": self.type, "object": self.obj}) + b"\n"
        return self._line


_RESOURCE_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?/?$"
)
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?(?:/(status|finalize))?/?$")


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _wants_table(request: rendering.Request) -> bool:
    accept = request.headers.get("Accept", request.headers.get("accept", ""))
    return "as=Table" in accept


_REASONS = {
    409: "Conflict",
    500: "InternalError",
    503: "ServiceUnavailable",
    429: "TooManyRequests",
    404: "NotFound",
    422: "Invalid",
}
