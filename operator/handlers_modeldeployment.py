"""kopf wiring for ModelDeployment: resolve, render, apply, load adapters, write status.

The decisions are pure (status_serving, render_serving); this module only gathers inputs
(promoting FineTuneJobs from an index, referenced ones, the Deployment and pods from the API, each engine's
/v1/models) and writes outputs (children, adapter loads, annotations, one status patch that
carries the resourceVersion it was computed from).

Reconciliation is level-based: the same `reconcile()` runs on create/update/resume and from a
1 s timer that acts when something changed (a pod or the Deployment emitted an event, a
FineTuneJob nudged, a canary annotation appeared) and otherwise every
`KUBETUNE_SERVING_RESYNC_SECONDS`. So a restarted pod gets its adapters back within a second
and readiness reaches the status at once, while a missed event costs at most one resync.
A FineTuneJob whose phase or result changes nudges the ModelDeployments that use it (its
`deployTo` target, or those that reference it) with an annotation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import kopf
from prometheus_client import REGISTRY, Gauge

from kubetune.api import ManifestError, parse_modeldeployment

from . import canary_runner, events
from . import render_serving as rs
from . import status_serving as ss
from .conditions import condition, now_rfc3339, set_conditions, status_patch
from .handlers_finetunejob import observe_finetunejobs
from .k8s import Conflict, KubeApi, KubeError, NotFound, Resource, api_of, reset_shared_api
from .metrics import RECONCILE_ERRORS
from .render_common import add_labels
from .settings import Settings
from .vllm_admin import FAILED, LOADED, LOADING, EngineUnreachable, VllmAdmin, VllmAdminError, sync_adapters
from .vllm_args import EngineArgsError

log = logging.getLogger(__name__)

GROUP, VERSION = "kubetune.io", "v1alpha1"
MD = (GROUP, VERSION, "modeldeployments")
FTJ = (GROUP, VERSION, "finetunejobs")
NUDGE_ANNOTATION = "kubetune.io/source-revision"

RESOURCES: dict[str, Resource] = {
    "ConfigMap": Resource("v1", "configmaps"),
    "Secret": Resource("v1", "secrets"),
    "Service": Resource("v1", "services"),
    "Pod": Resource("v1", "pods"),
    "Deployment": Resource("apps/v1", "deployments"),
    "HorizontalPodAutoscaler": Resource("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": Resource("policy/v1", "poddisruptionbudgets"),
    "ScaledObject": Resource("keda.sh/v1alpha1", "scaledobjects"),
    "PodMonitor": Resource("monitoring.coreos.com/v1", "podmonitors"),
    "ServiceMonitor": Resource("monitoring.coreos.com/v1", "servicemonitors"),
    "ModelDeployment": Resource(f"{GROUP}/{VERSION}", "modeldeployments"),
    "FineTuneJob": Resource(f"{GROUP}/{VERSION}", "finetunejobs"),
}
OPTIONAL_KINDS = ("HorizontalPodAutoscaler", "ScaledObject", "PodDisruptionBudget", "PodMonitor", "ServiceMonitor")
"""Children that come and go with the spec or settings; stale ones are deleted by name."""

# Keys a merge patch would otherwise leave behind when a new rendering omits them.
_DEPLOYMENT_OPTIONAL_POD_KEYS = ("initContainers", "nodeSelector", "tolerations")

PHASES = ("Pending", "WaitingForTraining", "Deploying", "Ready", "Degraded", "Failed")


def _gauge() -> Gauge:
    """`kubetune_modeldeployments{phase}` in the default registry, like operator/metrics.py's."""
    existing = getattr(REGISTRY, "_names_to_collectors", {}).get("kubetune_modeldeployments")
    if existing is not None:
        return existing  # the module was imported twice in one process (tests)
    return Gauge("kubetune_modeldeployments", "ModelDeployments by phase, as the operator last saw them.", ["phase"])


MODELDEPLOYMENTS = _gauge()
_phases: dict[tuple[str, str], str] = {}
for _phase in PHASES:  # every series exported at 0 from the start
    MODELDEPLOYMENTS.labels(phase=_phase)


def _record_phase(namespace: str, name: str, phase: str | None) -> None:
    if phase is None:
        _phases.pop((namespace, name), None)
    else:
        _phases[(namespace, name)] = phase
    for known in PHASES:
        MODELDEPLOYMENTS.labels(phase=known).set(sum(1 for p in _phases.values() if p == known))


# ----------------------------------------------------------------------------- shared clients

_state: dict[str, Any] = {}


def serving_settings(memo: Any = None) -> rs.ServingSettings:
    """Serving settings: the operator's Settings (memo.settings) where they overlap, else env."""
    operator_settings = getattr(memo, "settings", None) if memo is not None else None
    key = ("settings", id(operator_settings))
    if key not in _state:  # the entry holds the settings too, so their id is not reused meanwhile
        _state[key] = (operator_settings, from_operator_settings(operator_settings))
    return _state[key][1]


def from_operator_settings(settings: Settings | None, env: Mapping[str, str] | None = None) -> rs.ServingSettings:
    import dataclasses
    import os

    env = os.environ if env is None else env
    serving = rs.ServingSettings.from_env(env)
    if not isinstance(settings, Settings):
        return serving
    overrides: dict[str, Any] = {
        "vllm_image": settings.vllm_image,
        "gateway_image": settings.gateway_image,
        "kubetune_image": settings.trainer_image,
        "enable_keda": settings.enable_keda,
        "model_cache_claim": settings.model_cache_claim or None,
        "extra_labels": dict(settings.extra_labels),
    }
    if not env.get("KUBETUNE_SERVING_RESYNC_SECONDS"):
        overrides["resync_seconds"] = settings.resync_seconds
    return dataclasses.replace(serving, **overrides)


def reset_state() -> None:
    """Forget cached clients and settings (tests change the environment between operators)."""
    reset_shared_api()
    _state.clear()
    _phases.clear()
    _nudged.clear()
    _dirty.clear()
    _locks.clear()
    canary_runner.reset()


# ----------------------------------------------------------------------------- indexes


def _job_view(namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A FineTuneJob as the plain dict the pure resolvers read."""
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


@kopf.index(*FTJ, field="spec.deployTo.name", value=kopf.PRESENT)
async def finetunejobs_by_namespace(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """FineTuneJobs that promote themselves (spec.deployTo), by namespace.

    Only those: a deployment finds them by their target, while the jobs it names itself
    (model or adapters) are read from the API when it reconciles (`_with_referenced_jobs`).
    A kopf index rather than an observer of the FineTuneJob handler: kopf fills its indexes
    from the initial listing before any handler runs, so a restarted operator never
    reconciles a deployment without the jobs promoting into it (which would roll it back).

    Handlers here are `async def` even without awaiting: kopf runs a plain `def` in a thread
    pool, a thread hop per event that fights the event loop for the GIL.
    """
    return {namespace: _job_view(namespace, name, body)}


def referenced_jobs(spec: Mapping[str, Any]) -> set[str]:
    """Names of the FineTuneJobs a ModelDeployment spec refers to (model or adapters)."""
    refs = set()
    model_ref = (spec.get("model") or {}).get("fineTuneJobRef") or {}
    if model_ref.get("name"):
        refs.add(model_ref["name"])
    for adapter in spec.get("adapters") or []:
        ref = adapter.get("fineTuneJobRef") or {}
        if ref.get("name"):
            refs.add(ref["name"])
    return refs


async def _with_referenced_jobs(api: KubeApi, namespace: str, spec: Mapping[str, Any],
                                jobs: Mapping[str, Any]) -> dict[str, Any]:
    """`jobs` plus the referenced ones it lacks, read fresh (absent ones stay absent)."""
    missing = sorted(referenced_jobs(spec) - set(jobs))
    bodies = await asyncio.gather(*(api.get(RESOURCES["FineTuneJob"], namespace, job) for job in missing))
    found = {job: _job_view(namespace, job, body) for job, body in zip(missing, bodies) if body is not None}
    return {**jobs, **found}


@kopf.index(*MD)
async def modeldeployments_by_job(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    """Which ModelDeployments reference a FineTuneJob (model or adapters)."""
    return {(namespace, job): name for job in referenced_jobs(spec)}


def _jobs_in(index: Mapping[Any, Any], namespace: str) -> dict[str, dict[str, Any]]:
    return {job["metadata"]["name"]: job for job in index.get(namespace, [])}


# ----------------------------------------------------------------------------- FineTuneJob -> nudge


def job_revision(status: Mapping[str, Any]) -> str:
    artifact = status.get("artifact") or {}
    evaluation = status.get("evaluation") or {}
    key = json.dumps(
        [status.get("phase"), artifact.get("uri"), artifact.get("digest"), evaluation.get("passed")], sort_keys=True
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


_nudged: dict[tuple[str, str, str], str] = {}


@observe_finetunejobs
async def nudge_deployments(
    type: str | None, body: Mapping[str, Any], memo: Any, modeldeployments_by_job: kopf.Index, **_: Any
) -> None:
    """A job's phase or result changed: touch each ModelDeployment that uses it.

    Progress updates keep the same revision, so they cause no writes.
    """
    if type == "DELETED":
        return
    status = body.get("status") or {}
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    targets = set(modeldeployments_by_job.get((namespace, name), []))
    deploy_to = ((body.get("spec") or {}).get("deployTo") or {}).get("name")
    if deploy_to:
        targets.add(deploy_to)
    if not targets:
        return  # most jobs: nothing serves them
    revision = f"{name}:{job_revision(status)}"
    api = api_of(memo)
    for target in sorted(targets):
        if _nudged.get((namespace, name, target)) == revision:
            continue
        try:
            await api.patch(
                RESOURCES["ModelDeployment"], namespace, target,
                {"metadata": {"annotations": {NUDGE_ANNOTATION: revision}}},
            )
        except NotFound:
            pass  # a deployTo naming a missing deployment: nothing to promote into
        _nudged[(namespace, name, target)] = revision


# ----------------------------------------------------------------------------- ModelDeployment


@kopf.on.create(*MD)
@kopf.on.update(*MD)
@kopf.on.resume(*MD)
async def reconcile_modeldeployment(
    namespace: str, name: str, body: kopf.Body, memo: Any, finetunejobs_by_namespace: kopf.Index, **_: Any
) -> None:
    memo["serving_seen_nudge"] = (body["metadata"].get("annotations") or {}).get(NUDGE_ANNOTATION)
    await _reconcile_counted(namespace, name, memo, finetunejobs_by_namespace)
    memo["serving_last_sync"] = time.monotonic()


_locks: dict[tuple[str, str], asyncio.Lock] = {}


async def _reconcile_counted(namespace: str, name: str, memo: Any, index: kopf.Index) -> None:
    """One reconcile at a time per object: kopf runs timers beside change handlers."""
    lock = _locks.setdefault((namespace, name), asyncio.Lock())
    async with lock:
        try:
            await reconcile(api_of(memo), namespace, name, _jobs_in(index, namespace), serving_settings(memo))
        except Exception:
            RECONCILE_ERRORS.labels(kind="ModelDeployment").inc()
            raise


_dirty: set[tuple[str, str]] = set()
"""(namespace, instance label) of deployments whose pods or Deployment changed since the last sync."""


@kopf.on.event("", "v1", "pods", labels={rs.MODEL_LABEL: kopf.PRESENT})
@kopf.on.event("apps", "v1", "deployments", labels={rs.MODEL_LABEL: kopf.PRESENT})
async def serving_child_changed(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    """A pod restarted or became ready, a rollout moved: resync on the next 1 s tick."""
    _dirty.add((namespace, labels[rs.MODEL_LABEL]))


@kopf.timer(*MD, interval=1.0, initial_delay=1.0)
async def resync_modeldeployment(
    namespace: str, name: str, body: kopf.Body, memo: Any, finetunejobs_by_namespace: kopf.Index, **_: Any
) -> None:
    """Level-based catch-up: at once after a child changed, else at the configured cadence.

    The 1 s tick itself makes no API call.
    """
    key = (body["metadata"]["namespace"], rs.selector_labels(body["metadata"]["name"])[rs.MODEL_LABEL])
    annotations = body["metadata"].get("annotations") or {}
    # kopf ignores changes to annotations under its own storage prefix (kubetune.io/), so
    # the canary action and a FineTuneJob's nudge are noticed here, within a tick.
    asked = bool(annotations.get(ss.CANARY_ANNOTATION))
    nudged = annotations.get(NUDGE_ANNOTATION) != memo.get("serving_seen_nudge")
    last = memo.get("serving_last_sync", 0.0)
    analysis_due = canary_runner.is_due(namespace, name)
    if not (asked or nudged or analysis_due or key in _dirty) and (
            time.monotonic() - last < serving_settings(memo).resync_seconds):
        return
    _dirty.discard(key)
    memo["serving_seen_nudge"] = annotations.get(NUDGE_ANNOTATION)
    memo["serving_last_sync"] = time.monotonic()
    await _reconcile_counted(namespace, name, memo, finetunejobs_by_namespace)


@kopf.on.delete(*MD, optional=True)
async def forget_modeldeployment(namespace: str, name: str, **_: Any) -> None:
    _record_phase(namespace, name, None)
    _locks.pop((namespace, name), None)
    canary_runner.forget(namespace, name)


async def _write_status(
    api: KubeApi, body: Mapping[str, Any], desired: Mapping[str, Any], *, generation: Any, stamp: str
) -> None:
    """Write our status fields; `desired["conditions"]` are merged by type into the live list.

    The monitoring handlers write other conditions (Drifted, ...) into the same list, and a
    merge patch replaces lists whole: so the write re-reads the object and carries its
    resourceVersion, and a concurrent write makes it retry on fresh data instead of undoing it.
    A phase change also becomes an Event (a Warning when it is bad news).
    """
    res = RESOURCES["ModelDeployment"]
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for attempt in range(5):
        fresh = await api.get(res, namespace, name)
        if fresh is None:
            return  # deleted meanwhile
        current = fresh.get("status") or {}
        wanted = dict(desired)
        wanted["conditions"] = set_conditions(current.get("conditions"), desired["conditions"], generation=generation, now=stamp)
        changes = status_patch(current, wanted)
        if not changes:
            return
        try:
            await api.patch(res, namespace, name,
                            {"metadata": {"resourceVersion": fresh["metadata"]["resourceVersion"]}, "status": changes},
                            subresource="status")
        except Conflict:
            if attempt == 4:
                raise
            continue
        new_phase = wanted.get("phase")
        if new_phase and new_phase != current.get("phase"):
            ready = next((c for c in desired["conditions"] if c["type"] == "Ready"), {})
            events.emit(body, ready.get("reason") or new_phase, f"{new_phase}: {ready.get('message', '')}".rstrip(": "),
                        warning=new_phase in ("Failed", "Degraded"))
        return


async def reconcile(
    api: KubeApi, namespace: str, name: str, jobs: Mapping[str, Any], settings: rs.ServingSettings
) -> None:
    """Bring one ModelDeployment's children, engines and status in line with its spec.

    Reads the object fresh (the caller holds its lock), so decisions never rest on a
    snapshot older than this operator's own last write.
    """
    body = await api.get(RESOURCES["ModelDeployment"], namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    meta = body["metadata"]
    status = dict(body.get("status") or {})
    generation = meta.get("generation")
    stamp = now_rfc3339()

    try:
        md = parse_modeldeployment(
            {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": dict(meta), "spec": dict(body["spec"])}
        )
    except ManifestError as exc:
        await _blocked(api, body, ss.Blocked("InvalidSpec", str(exc), "Failed"), generation, stamp)
        _record_phase(namespace, name, "Failed")
        return

    jobs = await _with_referenced_jobs(api, namespace, body.get("spec") or {}, jobs)
    choice = ss.resolve_model(md, jobs)
    if choice.model is None:
        assert choice.blocked is not None
        deployment = await api.get(RESOURCES["Deployment"], namespace, rs.names(name)["deployment"])
        if deployment is not None and status.get("modelUri"):
            # The previous model keeps serving until the new one may replace it.
            phase = await _still_serving(api, body, choice.blocked, deployment, generation, stamp)
        else:
            await _blocked(api, body, choice.blocked, generation, stamp)
            phase = choice.blocked.phase
        _record_phase(namespace, name, phase)
        return

    desired, waiting = ss.resolve_adapters(md, jobs)
    annotations = dict(meta.get("annotations") or {})
    canary_status = status.get("canary")
    served_adapters = {a["name"]: a.get("uri") for a in status.get("adapters") or []}
    canary_served = (canary_status or {}).get("adapter", "") + ss.CANARY_SUFFIX if canary_status else None
    stable = {n: u for n, u in served_adapters.items() if n != canary_served and u}
    rolled_back = _json_annotation(annotations, ss.ROLLED_BACK_ANNOTATION)
    selector = ",".join(f"{k}={v}" for k, v in rs.selector_labels(name).items())
    pods = await api.list(RESOURCES["Pod"], namespace, label_selector=selector)
    action = (annotations.get(ss.CANARY_ANNOTATION) or "").strip().lower() or None
    analysis = md.spec.rollout.analysis
    verdict = None
    if canary_status and analysis is not None and action is None:
        verdict = await canary_runner.step(namespace, name, canary_status, analysis,
                                           _gateway_urls(pods, settings), stamp)
        action = verdict.action
    plan = ss.plan_adapters(
        desired,
        stable=stable,
        canary=canary_status,
        strategy=md.spec.rollout.strategy,
        weight=md.spec.rollout.canary_weight,
        action=action,
        rolled_back=rolled_back,
    )
    changed = plan.stable != stable or plan.canary != canary_status or plan.annotation_done
    analysis_condition = _analysis_outcome(plan, canary_status, verdict, analysis)
    if plan.canary is None:
        canary_runner.forget(namespace, name)
    elif verdict is not None and plan.canary.get("uri") == canary_status.get("uri"):
        plan.canary["analysis"] = verdict.status
    elif plan.canary.get("uri") != (canary_status or {}).get("uri") and plan.canary.get("analysis"):
        plan.canary["analysis"] = None  # a new version starts afresh (None: the merge patch removes it)

    inp = rs.RenderInput(
        md=md,
        model=choice.model,
        adapter_uris=sorted(set(plan.serve.values())),
        canary_routes=plan.routes,
        settings=settings,
    )
    try:
        children = [add_labels(child, settings.extra_labels) for child in rs.render_all(inp)]
    except (EngineArgsError, ValueError) as exc:
        await _blocked(api, body, ss.Blocked("InvalidSpec", str(exc), "Failed"), generation, stamp)
        _record_phase(namespace, name, "Failed")
        return

    engine_key = await _engine_key(api, md, settings.extra_labels)
    skipped = await _apply_children(api, children, namespace, name)
    deployment = await api.get(RESOURCES["Deployment"], namespace, rs.names(name)["deployment"])
    health = ss.deployment_health(deployment)

    pod_states = await _sync_pods(pods, plan.serve, settings, keep=choice.model, api_key=engine_key)
    failures = [
        f"{served} on {pod}: {msg}"
        for pod, states in sorted(pod_states.items())
        for served, (state, msg) in sorted(states.items())
        if state == FAILED
    ]
    loading = sorted({served for states in pod_states.values() for served, (state, _) in states.items() if state == LOADING})
    notes = (list(plan.notes) if changed else []) + plan.held + [f"{kind} not created: {why}" for kind, why in skipped]
    phase, conditions = ss.serving_conditions(
        health, adapter_failures=failures, adapters_loading=loading, waiting=waiting, notes=notes, canary=plan.canary
    )
    if analysis_condition is not None:
        conditions.append(analysis_condition)

    served_models = [choice.model.served_name]
    if choice.model.adapter is not None:
        served_models.append(choice.model.adapter.name)
    served_models += sorted(n for n in plan.serve if n not in served_models)
    model_uri = choice.model.adapter.path if choice.model.adapter is not None else choice.model.uri
    desired_status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "observedGeneration": generation,
        "readyReplicas": health.ready if health else 0,
        "endpoint": rs.endpoint(name, namespace),
        "servedModels": served_models,
        "modelUri": model_uri,
        "adapters": ss.adapter_status(plan, desired, pod_states) or None,
        "canary": plan.canary,
    }
    if status.get("modelUri") != model_uri or not status.get("lastDeployTime"):
        desired_status["lastDeployTime"] = stamp
    # Annotations before status: if the status write then fails, the canary is still shown
    # as running (the user can act again) rather than silently starting over.
    annotation_patch: dict[str, str | None] = {}
    if plan.annotation_done:
        annotation_patch[ss.CANARY_ANNOTATION] = None
    refused = json.dumps(plan.rolled_back, sort_keys=True) if plan.rolled_back else None
    if refused != annotations.get(ss.ROLLED_BACK_ANNOTATION):
        annotation_patch[ss.ROLLED_BACK_ANNOTATION] = refused
    old_revisions = _json_annotation(annotations, ss.REVISIONS_ANNOTATION)
    revisions = ss.update_revisions(old_revisions, stable, plan.stable)
    if revisions != old_revisions:
        annotation_patch[ss.REVISIONS_ANNOTATION] = json.dumps(revisions, sort_keys=True) if revisions else None
    if annotation_patch:
        await api.patch(RESOURCES["ModelDeployment"], namespace, name, {"metadata": {"annotations": annotation_patch}})

    await _write_status(api, body, desired_status, generation=generation, stamp=stamp)
    _record_phase(namespace, name, phase)
    if changed:
        for note in plan.notes:  # only real transitions become Events, not every resync
            events.emit(body, "AdapterRollout", note)
        if verdict is not None and verdict.action and analysis_condition is not None:
            events.emit(body, analysis_condition["reason"], analysis_condition["message"],
                        warning=verdict.action == "rollback")


def _analysis_outcome(plan: ss.AdapterPlan, before: Mapping[str, Any] | None, verdict: canary_runner.Step | None,
                      spec: Any) -> dict[str, Any] | None:
    """The CanaryAnalysis condition: Unknown while it runs, True once it promoted, False once it
    rolled back. None leaves the last outcome on the object (no canary, no analysis)."""
    if spec is None or before is None and plan.canary is None:
        return None
    if verdict is not None and verdict.action and plan.canary is None:
        what = f"canary of {before['adapter']!r} ({before['uri']})"
        if verdict.action == "promote":
            return condition("CanaryAnalysis", True, "Promoted", f"{what} promoted: {verdict.reason}")
        return condition("CanaryAnalysis", False, "RolledBack",
                         f"{what} rolled back, {before.get('previousUri')} kept: {verdict.reason}")
    if plan.canary is None:
        return None  # ended by hand or by the spec: the plan's notes say how
    message = (verdict.status.get("message") if verdict is not None else "") or "waiting for the first window"
    if verdict is not None and verdict.unreachable:
        message += "; gateways not answering: " + ", ".join(verdict.unreachable)
    return condition("CanaryAnalysis", "Unknown", "InProgress",
                     f"canary of {plan.canary['adapter']!r} ({plan.canary['uri']}): {message}")


def _gateway_urls(pods: list[Mapping[str, Any]], settings: rs.ServingSettings) -> dict[str, str]:
    port = settings.gateway_metrics_port or settings.gateway_port
    return {pod["metadata"]["name"]: f"http://{pod['status']['podIP']}:{port}/metrics" for pod in pods if _pod_ready(pod)}


def _json_annotation(annotations: Mapping[str, str], key: str) -> dict[str, Any]:
    try:
        value = json.loads(annotations.get(key) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _still_serving(
    api: KubeApi, body: Mapping[str, Any], blocked: ss.Blocked, deployment: Mapping[str, Any],
    generation: Any, stamp: str,
) -> str:
    status = body.get("status") or {}
    health = ss.deployment_health(deployment)
    phase, conditions = ss.serving_conditions(health)
    conditions = [c for c in conditions if c["type"] != "Progressing"] + [
        condition("Progressing", False, blocked.reason, f"still serving {status['modelUri']}; {blocked.message}")
    ]
    desired = {
        "phase": phase, "conditions": conditions, "observedGeneration": generation,
        "readyReplicas": health.ready if health else 0,
    }
    await _write_status(api, body, desired, generation=generation, stamp=stamp)
    return phase


async def _blocked(api: KubeApi, body: Mapping[str, Any], blocked: ss.Blocked, generation: Any, stamp: str) -> None:
    desired = {"phase": blocked.phase, "conditions": ss.blocked_conditions(blocked), "observedGeneration": generation}
    await _write_status(api, body, desired, generation=generation, stamp=stamp)


# ----------------------------------------------------------------------------- children


async def _apply_children(api: KubeApi, children: list[dict[str, Any]], namespace: str, name: str) -> list[tuple[str, str]]:
    """Create or merge-patch each child; delete optional kinds no longer rendered.

    Returns (kind, why) for children whose API is not installed (KEDA, prometheus-operator):
    the rest of the deployment still works, and the status says what is missing.
    """
    skipped = []
    rendered = {c["kind"] for c in children}
    for child in children:
        res = RESOURCES[child["kind"]]
        if child["kind"] in OPTIONAL_KINDS and not await api.has_resource(res.api_version, res.plural):
            skipped.append((child["kind"], f"{res.api_version} {res.plural} is not installed in the cluster"))
            continue
        await _apply(api, res, child)
    names = rs.names(name)
    stale = {
        "HorizontalPodAutoscaler": names["hpa"], "ScaledObject": names["scaledobject"],
        "PodDisruptionBudget": names["pdb"], "PodMonitor": names["monitor"], "ServiceMonitor": names["monitor"],
    }
    for kind, child_name in stale.items():
        if kind in rendered:
            continue
        res = RESOURCES[kind]
        if not await api.has_resource(res.api_version, res.plural):
            continue
        existing = await api.get(res, namespace, child_name)
        if existing and _owned_by_us(existing, name):
            await api.delete(res, namespace, child_name)
    return skipped


async def _engine_key(api: KubeApi, md: Any, extra_labels: Mapping[str, str]) -> str:
    """The engine's API key: generated once into a Secret owned by the ModelDeployment."""
    res = RESOURCES["Secret"]
    namespace, name = md.metadata["namespace"], rs.names(md.metadata["name"])["engine_key"]
    existing = await api.get(res, namespace, name)
    if existing is None:
        try:
            existing = await api.call(
                "POST", res.path(namespace), body=add_labels(rs.render_engine_key(md, secrets.token_urlsafe(32)), extra_labels))
        except KubeError as exc:
            if exc.status != 409:
                raise
            existing = await api.get(res, namespace, name)  # created concurrently: use theirs
    try:
        return base64.b64decode((existing or {}).get("data", {}).get(rs.ENGINE_KEY, "")).decode()
    except ValueError as exc:
        raise kopf.TemporaryError(f"Secret {namespace}/{name} has no valid {rs.ENGINE_KEY!r}: {exc}", delay=30) from exc


def _owned_by_us(obj: Mapping[str, Any], md_name: str) -> bool:
    return any(
        ref.get("kind") == "ModelDeployment" and ref.get("name") == md_name
        for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


async def _apply(api: KubeApi, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    try:
        return await api.call("POST", res.path(meta["namespace"]), body=obj)
    except KubeError as exc:
        if exc.status != 409:
            raise
    patch = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    patch["metadata"] = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
    if obj["kind"] == "Deployment":
        pod = patch["spec"]["template"]["spec"]
        for key in _DEPLOYMENT_OPTIONAL_POD_KEYS:
            pod.setdefault(key, None)
        patch["spec"]["template"]["metadata"].setdefault("annotations", None)
    return await api.patch(res, meta["namespace"], meta["name"], patch)


# ----------------------------------------------------------------------------- engines


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


async def _sync_pods(
    pods: list[Mapping[str, Any]],
    serve: Mapping[str, str],
    settings: rs.ServingSettings,
    *,
    keep: rs.ResolvedModel,
    api_key: str,
) -> dict[str, dict[str, tuple[str, str]]]:
    """Per pod: make its engine serve `serve` (name -> URI); pod name -> served name -> state."""
    desired = {served: rs.pod_path(uri, settings) for served, uri in serve.items()}
    kept = frozenset({keep.adapter.name} if keep.adapter is not None else ())
    port = settings.admin_port or settings.vllm_port

    async def one(pod: Mapping[str, Any]) -> tuple[str, dict[str, tuple[str, str]]]:
        pod_name = pod["metadata"]["name"]
        if not _pod_ready(pod):
            return pod_name, {served: (LOADING, "waiting for the pod to be ready") for served in desired}
        async with VllmAdmin(f"http://{pod['status']['podIP']}:{port}", timeout=120, api_key=api_key) as admin:
            try:
                return pod_name, await sync_adapters(admin, desired, keep=kept)
            except EngineUnreachable as exc:
                return pod_name, {served: (LOADING, f"engine not answering: {exc}") for served in desired}
            except VllmAdminError as exc:
                return pod_name, {served: (FAILED, str(exc)) for served in desired}

    results = await asyncio.gather(*(one(pod) for pod in pods))
    return dict(results)


__all__ = [
    "LOADED",
    "reconcile",
    "reset_state",
]
