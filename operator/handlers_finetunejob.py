"""kopf wiring for FineTuneJob: parse, render, apply, set status. No logic of its own.

Level-based: every entry point (a FineTuneJob event whose spec revision is new, a child's
event, the periodic resync) reads the job and its children and converges; applying is
create-or-patch by deterministic names, so repeats and operator restarts never duplicate
anything. Status is written only when it changes (status_training decides what it says).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf
import yaml

from kubetune.api import API_VERSION, FineTuneJob, FineTuneJobSpec, check_object, immutable_changes
from kubetune.api.finetunejob import ADAPTER_METHODS, MUTABLE_SPEC_FIELDS, PLACEMENT_FIELDS
from kubetune.api.modeldeployment import Engine as ModelDeploymentEngine

from . import events, metrics
from .child_watch import start_child_watches, stop_child_watches
from .conditions import find_condition, now_rfc3339, status_patch
from .k8s import KINDS, Invalid, KubeApi, KubeError
from .render_common import LABEL_FINETUNEJOB, add_labels
from .render_rbac import render_rbac
from .render_training import (
    CONFIG_FILE,
    config_map_name,
    render_config_map,
    render_workload,
    suspend_owned_by_kueue,
    workload_name,
)
from .shared_storage import CONDITION as SHARED_STORAGE
from .shared_storage import needs_shared_claims, shared_storage_condition, writable_claims
from .status_training import Observed, desired_status, rejected_status

log = logging.getLogger(__name__)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

FTJ = ("kubetune.io", "v1alpha1", "finetunejobs")
FTJ_RES = KINDS["FineTuneJob"]
KUBERAY_MISSING = (
    "KubeRay is not installed: this cluster serves no ray.io/v1 RayJob. Install the KubeRay operator "
    "(helm repo add kuberay https://ray-project.github.io/kuberay-helm/ && helm install kuberay-operator "
    "kuberay/kuberay-operator) or, for a single worker, set spec.engine: Job."
)
UPDATE_REJECTED = "UpdateRejected"
MAX_JOB_NAME = 63
"""Children carry the name as a label value, which Kubernetes limits to 63 characters."""


def _api(memo: Any) -> KubeApi:
    return memo.api


def _lock(memo: Any, namespace: str, name: str) -> asyncio.Lock:
    return memo.locks.setdefault((namespace, name), asyncio.Lock())


def _as_manifest(body: Mapping[str, Any]) -> dict[str, Any]:
    doc = {k: v for k, v in dict(body).items() if k != "status"}
    doc.setdefault("apiVersion", API_VERSION)
    doc.setdefault("kind", "FineTuneJob")
    return doc


def effective_spec(desired: FineTuneJobSpec, accepted: Mapping[str, Any] | None) -> tuple[FineTuneJobSpec, list[str]]:
    """The spec to run once training started: the accepted one plus the mutable changes.

    Returns the spec and the immutable fields whose changes are ignored (for a condition).
    """
    if accepted is None:
        return desired, []
    old = FineTuneJobSpec.model_validate(accepted)
    rejected = immutable_changes(old, desired)
    wire = old.to_wire()
    new_wire = desired.to_wire()
    for key in MUTABLE_SPEC_FIELDS:
        if key in new_wire:
            wire[key] = new_wire[key]
        else:
            wire.pop(key, None)
    if desired.suspend:
        for key in PLACEMENT_FIELDS:
            if key in new_wire.get("resources", {}):
                wire.setdefault("resources", {})[key] = new_wire["resources"][key]
            else:
                wire.get("resources", {}).pop(key, None)
    return FineTuneJobSpec.model_validate(wire), rejected


async def _write_status(api: KubeApi, body: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """Patch the status if it differs; post an Event and update metrics on phase changes."""
    current = body.get("status") or {}
    patch = status_patch(current, desired)
    meta = body["metadata"]
    if patch is None:
        metrics.record_finetunejob_phase(meta["namespace"], meta["name"], current.get("phase"))
        return None
    await api.patch_status(FTJ_RES, meta["namespace"], meta["name"], patch)
    new_phase = desired.get("phase", current.get("phase"))
    events.emit_phase_change(body, current.get("phase"), new_phase, desired.get("failure"))
    metrics.record_finetunejob_phase(meta["namespace"], meta["name"], new_phase)
    if new_phase in ("Succeeded", "Failed"):
        metrics.record_finetunejob_duration(
            meta["namespace"], meta["name"], meta.get("uid", ""),
            desired.get("startTime") or meta.get("creationTimestamp"), desired.get("completionTime"),
        )
    return patch


def _version(obj: Mapping[str, Any] | None) -> int | None:
    value = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _seen(memo: Any, namespace: str, name: str, workload: Mapping[str, Any] | None) -> None:
    """Remember the newest workload version this operator has read or written for a job."""
    version = _version(workload)
    if version is not None:
        seen = memo.setdefault("workload_versions", {})
        seen[(namespace, name)] = max(version, seen.get((namespace, name), version))


def _is_stale(memo: Any, namespace: str, name: str, workload: Mapping[str, Any]) -> bool:
    """An event body older than what we already read (e.g. while the event waited for the
    job's lock, a reconcile read a newer one): using it would move the status backwards.

    resourceVersions are compared as numbers when both are (etcd's are); otherwise the
    body is treated as stale and re-read, which is always safe.
    """
    version = _version(workload)
    known = memo.get("workload_versions", {}).get((namespace, name))
    return version is None or (known is not None and version < known)


async def _observe(api: KubeApi, body: Mapping[str, Any], engine: str, memo: Any = None) -> Observed:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    workload = await api.get(KINDS[engine], namespace, workload_name(name, engine))
    if workload is None:
        other = "Job" if engine == "RayJob" else "RayJob"
        alt = await api.get(KINDS[other], namespace, workload_name(name, other)) if (body.get("status") or {}).get("rayJobName") else None
        if alt is not None:
            workload, engine = alt, other
    pods = await api.list(KINDS["Pod"], namespace, label_selector=f"{LABEL_FINETUNEJOB}={name}") if workload else []
    if memo is not None:
        _seen(memo, namespace, name, workload)
    return Observed(engine=engine, workload=workload, pods=pods)


def workload_create_only(body: Mapping[str, Any], spec: FineTuneJobSpec) -> tuple[tuple[str, ...], ...]:
    """Workload fields set at creation and never patched afterwards.

    Under Kueue, `suspend` is Kueue's admission switch. A batch Job's pod template is
    immutable (the API server refuses any change), so it is only sent again while the
    user suspends the job, when its scheduling directives may change.
    """
    paths: list[tuple[str, ...]] = []
    if suspend_owned_by_kueue(body) and not spec.suspend:
        paths.append(("spec", "suspend"))
    if spec.engine == "Job" and not spec.suspend:
        paths.append(("spec", "template"))
    return tuple(paths)


async def _accepted_spec(api: KubeApi, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The spec training runs on: the one in the ConfigMap we rendered (None if absent)."""
    meta = body["metadata"]
    cm = await api.get(KINDS["ConfigMap"], meta["namespace"], config_map_name(meta["name"]))
    if cm is None:
        return None
    return yaml.load(cm["data"][CONFIG_FILE], Loader=_LOADER)["spec"]  # JSON (YAML from older operators)


async def _deployment_max_lora_rank(api: KubeApi, namespace: str, spec: FineTuneJobSpec) -> int | None:
    """The max LoRA rank of the engine the job promotes into (spec.deployTo), for the trainer
    to refuse a larger adapter before training; None without deployTo or while the
    ModelDeployment does not exist yet (the engine then reports the adapter it cannot load)."""
    if spec.deploy_to is None or spec.method.type not in ADAPTER_METHODS:
        return None
    deployment = await api.get(KINDS["ModelDeployment"], namespace, spec.deploy_to.name)
    if deployment is None:
        return None
    engine = (deployment.get("spec") or {}).get("engine") or {}
    return int(engine.get("maxLoraRank", ModelDeploymentEngine().max_lora_rank))


def _start_storage_check(api: KubeApi, body: Mapping[str, Any], job: FineTuneJob) -> asyncio.Future | None:
    """Read the writable claims beside the workload's create (not before it: no added latency),
    until SharedStorage has an answer other than ClaimNotFound."""
    claims = writable_claims(job)
    current = find_condition((body.get("status") or {}).get("conditions"), SHARED_STORAGE)
    if not claims or not needs_shared_claims(job) or (current is not None and current.get("reason") != "ClaimNotFound"):
        return None  # access modes never change: one answer holds; a missing claim may appear
    namespace = body["metadata"]["namespace"]

    async def check() -> dict[str, Any] | None:
        try:
            found = await asyncio.gather(*(api.get(KINDS["PersistentVolumeClaim"], namespace, c) for c in claims))
        except KubeError as exc:  # forbidden, or a transient error: no verdict now, asked again next time
            log.info("%s/%s: claims not readable (%s); SharedStorage not checked", namespace, body["metadata"]["name"], exc)
            return None
        return shared_storage_condition(job, dict(zip(claims, found)))

    return asyncio.ensure_future(check())


async def reconcile(api: KubeApi, memo: Any, body: Mapping[str, Any]) -> None:
    """Converge one FineTuneJob: validate, render, apply children, then sync status."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    now = now_rfc3339()
    if len(meta["name"]) > MAX_JOB_NAME:
        await _write_status(api, body, rejected_status(
            body, "InvalidSpec", f"metadata.name: at most {MAX_JOB_NAME} characters (got {len(meta['name'])}): "
            "the name is a label value on the training pods", now=now, failed=True))
        return
    started = bool((body.get("status") or {}).get("startTime"))
    accepted = await _accepted_spec(api, body) if started else None
    parsed, errors = check_object(_as_manifest(body))
    extra, drop = [], []
    if errors:
        message = "; ".join(str(e) for e in errors)
        if accepted is None:
            await _write_status(api, body, rejected_status(body, "InvalidSpec", message, now=now, failed=True))
            return
        # Training runs on the accepted spec; the invalid edit is reported, not applied.
        job = FineTuneJob.model_validate({**_as_manifest(body), "spec": accepted})
        spec = job.spec
        extra.append({"type": UPDATE_REJECTED, "status": "True", "reason": "InvalidSpec",
                      "message": f"the changed spec is invalid and is not applied: {message}"})
    else:
        job = parsed
        spec, rejected = effective_spec(job.spec, accepted)
        job = job.model_copy(update={"spec": spec})
        if rejected:
            extra.append({
                "type": UPDATE_REJECTED, "status": "True", "reason": "ImmutableFieldChanged",
                "message": "training already started; these changes are ignored: " + ", ".join(rejected)
                + ". Create a new FineTuneJob to change them (suspend, activeDeadlineSeconds, backoffLimit, deployTo "
                "and, while suspended, placement may change).",
            })
        else:
            drop.append(UPDATE_REJECTED)
    if spec.engine == "RayJob" and not await api.has_resource("ray.io/v1", "rayjobs"):
        await _write_status(api, body, rejected_status(body, "KubeRayNotInstalled", KUBERAY_MISSING, now=now, failed=False))
        return

    owner = dict(body)
    # The workload first, on its own (what users wait for: it jumps the API queue); the
    # ConfigMap and RBAC are rendered and applied once it is on its way. Its pods wait for
    # them as on any cluster (a missing ConfigMap or ServiceAccount only delays a pod).
    extra_labels = memo.settings.extra_labels
    workload_apply = asyncio.ensure_future(api.apply(add_labels(render_workload(owner, job, memo.settings), extra_labels),
                                                     priority=0, create_only=workload_create_only(owner, spec)))
    await asyncio.sleep(0)  # let it reach the API queue before rendering the rest
    storage_check = _start_storage_check(api, body, job)
    max_lora_rank = await _deployment_max_lora_rank(api, meta["namespace"], spec)
    others = [add_labels(child, extra_labels)
              for child in (render_config_map(owner, job, max_lora_rank=max_lora_rank), *render_rbac(owner))]
    results = await asyncio.gather(
        workload_apply,
        *(api.apply(child, priority=1) for child in others),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    refused_updates = [e for e in failures if isinstance(e, Invalid) and e.method == "PATCH"]
    for exc in failures:
        if isinstance(exc, Invalid) and exc.method != "PATCH":
            await _write_status(api, body, rejected_status(
                body, "ChildRejected", f"the API server rejected a child: {exc.message}", now=now, failed=True))
            return
        if not isinstance(exc, Invalid):
            raise exc  # transient (kopf retries with backoff) or a bug
    if refused_updates:
        # The children exist and keep running as they are: report the refused edit, do not fail.
        drop = [d for d in drop if d != UPDATE_REJECTED]
        extra.append({"type": UPDATE_REJECTED, "status": "True", "reason": "ChildUpdateRejected",
                      "message": "the API server refused to update a child, which keeps its previous spec: "
                      + "; ".join(e.message for e in refused_updates)})
    if storage_check is not None:
        storage = await storage_check
        if storage is not None:
            extra.append(storage)
            before = find_condition((body.get("status") or {}).get("conditions"), SHARED_STORAGE) or {}
            if storage["status"] == "False" and (before.get("status"), before.get("reason")) != ("False", storage["reason"]):
                events.emit(body, "StorageNotShared", storage["message"], warning=True)  # once per cause
    if isinstance(results[0], BaseException):
        results = [(await api.get(KINDS[spec.engine], meta["namespace"], workload_name(meta["name"], spec.engine)), False)]
    workload, created = results[0]
    _seen(memo, meta["namespace"], meta["name"], workload)
    if created:
        events.emit(body, "Created", f"created {workload['kind']} {workload['metadata']['name']}")

    if created:
        # A new workload has no status and no pods yet: nothing else to read.
        await _write_status(api, body, desired_status(body, Observed(spec.engine, workload, ()), now=now, extra=extra, drop=drop))
        return
    fresh = await api.get(FTJ_RES, meta["namespace"], meta["name"]) or body
    observed = await _observe(api, fresh, spec.engine, memo)
    await _write_status(api, fresh, desired_status(fresh, observed, now=now, extra=extra, drop=drop))


async def sync_status(api: KubeApi, memo: Any, namespace: str, name: str, workload: Mapping[str, Any] | None = None) -> None:
    """Re-read a job and its children and write the status if it changed (level-based).

    `workload` is the RayJob/Job body when the caller already has it (a watch event).
    """
    body = await api.get(FTJ_RES, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    accepted = find_condition((body.get("status") or {}).get("conditions"), "Accepted")
    if accepted is None or accepted.get("status") != "True":
        if accepted is not None and accepted.get("reason") == "KubeRayNotInstalled":
            await reconcile(api, memo, body)  # KubeRay may have been installed since
        return
    engine = (body.get("spec") or {}).get("engine", "RayJob")
    if workload is not None and workload.get("kind") == engine and not _is_stale(memo, namespace, name, workload):
        _seen(memo, namespace, name, workload)
        pods = await api.list(KINDS["Pod"], namespace, label_selector=f"{LABEL_FINETUNEJOB}={name}")
        observed = Observed(engine=engine, workload=workload, pods=pods)
    else:
        observed = await _observe(api, body, engine, memo)
    phase = (body.get("status") or {}).get("phase")
    if observed.workload is None and phase not in ("Succeeded", "Failed"):
        await reconcile(api, memo, body)  # a child was deleted behind our back: recreate it
        return
    await _write_status(api, body, desired_status(body, observed, now=now_rfc3339()))


async def _guarded(memo: Any, namespace: str, name: str, coro_fn: Any) -> None:
    async with _lock(memo, namespace, name):
        try:
            await coro_fn()
        except Exception:
            metrics.record_reconcile_error("FineTuneJob")
            raise


# ----------------------------------------------------------------------------- kopf wiring


def spec_revision(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the children are rendered from, apart from status: a change means re-apply.

    The API server bumps `generation` on every spec change (and only then); labels carry
    Kueue's queue and priority, which are passed through. Status-only events (our own
    writes, the trainer's progress) keep the revision and cost nothing.
    """
    meta = body["metadata"]
    generation = meta.get("generation")
    if generation is None:  # an API server that does not count generations: hash the spec
        generation = hashlib.sha256(json.dumps(body.get("spec"), sort_keys=True, default=str).encode()).hexdigest()
    return (meta.get("uid"), generation, tuple(sorted((meta.get("labels") or {}).items())))


RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Backoff of a failed reconcile when the error names no delay of its own (seconds)."""


def _retry_delay(exc: BaseException, attempt: int) -> float:
    delay = getattr(exc, "delay", None)  # kopf.TemporaryError and our transient API errors
    if isinstance(delay, (int, float)) and delay > 0:
        return float(delay)
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


async def _reconcile_revision(memo: Any, body: Mapping[str, Any], revision: tuple[Any, ...], attempt: int = 0) -> None:
    """Reconcile and remember the revision; on failure, retry later from a fresh read.

    kopf does not retry event handlers, so retries are ours: with backoff, for as long as
    the job exists and this revision is not reconciled.
    """
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        await _guarded(memo, namespace, name, lambda: reconcile(_api(memo), memo, body))
    except Exception as exc:
        delay = _retry_delay(exc, attempt)
        log.warning("reconciling FineTuneJob %s/%s failed (attempt %d), retrying in %.1fs: %s",
                    namespace, name, attempt + 1, delay, exc)
        _schedule_retry(memo, namespace, name, delay, attempt + 1)
        return
    memo.reconciled[(namespace, name)] = revision


def _schedule_retry(memo: Any, namespace: str, name: str, delay: float, attempt: int) -> None:
    key = (namespace, name)
    pending = memo.retries.get(key)
    if pending is not None and not pending.done() and pending is not asyncio.current_task():
        return  # one retry per job is enough: it reads the job fresh when it runs
    task = asyncio.get_running_loop().create_task(_retry_later(memo, namespace, name, delay, attempt))
    memo.retries[key] = task
    task.add_done_callback(lambda t: memo.retries.pop(key, None) if memo.retries.get(key) is t else None)


async def _retry_later(memo: Any, namespace: str, name: str, delay: float, attempt: int) -> None:
    await asyncio.sleep(delay)
    try:
        body = await _api(memo).get(FTJ_RES, namespace, name)
    except KubeError as exc:
        _schedule_retry(memo, namespace, name, _retry_delay(exc, attempt), attempt + 1)
        return
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    revision = spec_revision(body)
    if memo.reconciled.get((namespace, name)) != revision:
        await _reconcile_revision(memo, body, revision, attempt)


FineTuneJobObserver = Callable[..., Awaitable[None]]
_observers: list[FineTuneJobObserver] = []


def observe_finetunejobs(observer: FineTuneJobObserver) -> FineTuneJobObserver:
    """Register `observer(type, body, memo, **kopf_kwargs)` for every FineTuneJob event.

    Other modules (the ModelDeployments' nudge) follow jobs through this instead of kopf
    event handlers of their own on FineTuneJobs: kopf runs each event through every handler
    of its kind, building its causes, loggers and kwargs each time (see docs/benchmarks.md).
    The observer runs after the job's own handling, gets the DELETED event too, and its
    failures are logged, never raised into the job's handling.
    """
    _observers.append(observer)
    return observer


async def _notify(type: str | None, body: Any, memo: Any, kwargs: dict[str, Any]) -> None:
    for observer in _observers:
        try:
            await observer(type, body, memo, **kwargs)
        except Exception:
            meta = body["metadata"]
            log.exception("FineTuneJob observer %s failed on %s/%s", getattr(observer, "__name__", observer),
                          meta.get("namespace"), meta.get("name"))


async def notify_observers(type: str | None, body: Any, memo: Any, **kwargs: Any) -> None:
    """The observers alone, as a kopf event handler, for a registry without
    `finetunejob_event` (the serving tests run the ModelDeployment handlers only)."""
    await _notify(type, body, memo, kwargs)


@kopf.on.event(*FTJ)
async def finetunejob_event(type: str | None, body: kopf.Body, memo: kopf.Memo, namespace: str, name: str,
                            **kwargs: Any) -> None:
    """Every FineTuneJob event, including the initial listing (type None, like a resume).

    An event handler rather than kopf's create/update/resume handlers: no diff-base, no
    progress annotations, no extra PATCH per event. Whether there is anything to do is
    decided here, level-based, from the job itself (`spec_revision`): children are
    re-applied once per revision, and immutability is judged against what the ConfigMap
    recorded when training started (see `reconcile`), not against a stored diff. Then the
    observers (`observe_finetunejobs`) see the event.
    """
    failure = None
    try:
        await _on_event(type, body, memo, namespace, name)
    except Exception as exc:  # raised after the observers had their turn (kopf logs it)
        failure = exc
    if _observers:
        await _notify(type, body, memo, kwargs)
    if failure is not None:
        raise failure


async def _on_event(type: str | None, body: Any, memo: Any, namespace: str, name: str) -> None:
    if type == "DELETED":
        # Children go with their owner (ownerReferences); artifacts on storage are kept.
        memo.reconciled.pop((namespace, name), None)
        memo.locks.pop((namespace, name), None)
        memo.get("workload_versions", {}).pop((namespace, name), None)
        metrics.record_finetunejob_phase(namespace, name, None)
        return
    if body["metadata"].get("deletionTimestamp"):
        return
    revision = spec_revision(body)
    if memo.reconciled.get((namespace, name)) == revision:
        return
    await _reconcile_revision(memo, dict(body), revision)


async def resync_all(memo: Any) -> int:
    """One level-based pass: re-read every unfinished job's children. Returns how many."""
    api = _api(memo)
    namespaces = memo.settings.namespaces or (None,)
    bodies = [b for ns in namespaces for b in await api.list(FTJ_RES, ns)]
    todo = [b for b in bodies if (b.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    limit = asyncio.Semaphore(8)

    async def one(body: Mapping[str, Any]) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        async with limit:
            try:
                await _guarded(memo, namespace, name, lambda: sync_status(api, memo, namespace, name))
            except Exception as exc:  # one job's trouble must not stop the others
                log.warning("resync of %s/%s failed, will retry: %s", namespace, name, exc)

    await asyncio.gather(*(one(b) for b in todo))
    return len(todo)


async def _resync_loop(memo: Any) -> None:
    while True:
        await asyncio.sleep(memo.settings.resync_seconds)
        try:
            await resync_all(memo)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.record_reconcile_error("FineTuneJob")
            log.warning("resync pass failed, will retry: %s", exc)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    """Level-based safety net: every KUBETUNE_RESYNC_SECONDS, re-read unfinished jobs.

    One operator-wide task rather than a kopf daemon per job: no finalizer on the jobs
    (deletion never waits for the operator) and no task per object.
    """
    memo.setdefault("reconciled", {})
    memo.setdefault("retries", {})
    memo.resync_task = asyncio.get_running_loop().create_task(_resync_loop(memo))
    memo.child_watches = start_child_watches(
        _api(memo), {kind: KINDS[kind] for kind in CHILD_KINDS}, tuple(memo.settings.namespaces),
        LABEL_FINETUNEJOB, lambda kind: _child_handler(memo, kind))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    tasks = [t for t in [memo.get("resync_task"), *(memo.get("retries") or {}).values()] if t is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await stop_child_watches(memo.get("child_watches") or [])


def _owner_of(labels: Mapping[str, str] | None) -> str | None:
    return (labels or {}).get(LABEL_FINETUNEJOB)


async def _child_changed(memo: Any, namespace: str, labels: Mapping[str, str], type_: str | None,
                         workload: Mapping[str, Any] | None = None) -> None:
    owner = _owner_of(labels)
    if not owner:
        return
    if workload is not None and type_ == "ADDED" and not workload.get("status"):
        return  # our own create: reconcile already wrote the status it implies
    if type_ == "DELETED":
        workload = None  # re-read: the resync recreates a workload deleted behind our back
    await _guarded(memo, namespace, owner, lambda: sync_status(_api(memo), memo, namespace, owner, workload))


CHILD_KINDS = ("RayJob", "Job", "Pod")
"""Watched for their owners' status (by `child_watch`, not kopf): workloads and their pods."""


def _child_handler(memo: Any, kind: str):
    async def handle(event_type: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        workload = obj if kind != "Pod" else None  # a pod event re-reads the workload
        await _child_changed(memo, meta.get("namespace") or "", meta.get("labels") or {}, event_type, workload)

    return handle
