"""What a ModelDeployment should serve, and what its status says (pure).

Three decisions live here, each a plain function over dicts so it is tested without a cluster:

- resolve_model / resolve_adapters: which artifact is served. A FineTuneJob's artifact is served
  only once the job Succeeded and `status.evaluation.passed` is true; otherwise a `Blocked`
  says why (WaitingForTraining with the phase, GatesNotPassed with each failed gate's value and
  threshold, FineTuneJobNotFound, ArtifactMissing, TrainingFailed). A job whose
  `spec.deployTo` names the deployment promotes its artifact the same way; the newest passed
  one wins.
- plan_adapters: the runtime LoRA plan, including the canary state machine (start, promote,
  rollback, supersede) and the gateway routes it implies.
- conditions / phase from the Deployment, the engine's per-pod adapter state and the above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.modeldeployment import ModelDeployment

from .conditions import condition
from .render_serving import CanaryRoute, ResolvedModel
from .vllm_args import LoraModule

CANARY_ANNOTATION = "kubetune.io/canary"
ROLLED_BACK_ANNOTATION = "kubetune.io/canary-rolled-back"
REVISIONS_ANNOTATION = "kubetune.io/adapter-revisions"
"""JSON {adapter: {"current": uri, "previous": uri}}: the version a promotion or replace superseded."""
CANARY_SUFFIX = "-canary"


@dataclass(frozen=True)
class Blocked:
    """Why nothing (new) can be served yet."""

    reason: str
    message: str
    phase: str = "WaitingForTraining"


# ----------------------------------------------------------------------------- FineTuneJobs


def _status(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return job.get("status") or {}


def describe_failed_gates(job: Mapping[str, Any]) -> str:
    """`evalLoss=2.5 (needs <= 2.0)` for each failed gate; absent values say so."""
    evaluation = _status(job).get("evaluation") or {}
    parts = []
    for gate in evaluation.get("gates") or []:
        if gate.get("passed"):
            continue
        value = gate.get("value")
        shown = "not measured" if value is None else f"{value:g}"
        parts.append(f"{gate.get('metric')}={shown} (needs {gate.get('operator')} {gate.get('threshold'):g})")
    return ", ".join(parts)


def job_blocker(job_name: str, job: Mapping[str, Any] | None, namespace: str, *, need_kind: str | None = None) -> Blocked | None:
    """None when the job's artifact may be served, else why not."""
    if job is None:
        return Blocked(
            "FineTuneJobNotFound", f"FineTuneJob {job_name!r} does not exist in namespace {namespace!r}", "Pending"
        )
    status = _status(job)
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        failure = status.get("failure") or {}
        detail = f": {failure.get('reason')}: {failure.get('message', '')}".rstrip(": ") if failure else ""
        return Blocked("TrainingFailed", f"FineTuneJob {job_name!r} failed{detail}", "Failed")
    if phase != "Succeeded":
        return Blocked("WaitingForTraining", f"FineTuneJob {job_name!r} is {phase}, not Succeeded yet")
    evaluation = status.get("evaluation") or {}
    if evaluation.get("passed") is not True:
        failed = describe_failed_gates(job)
        if failed:
            message = f"FineTuneJob {job_name!r} did not pass its gates: {failed}"
        elif not evaluation:
            message = f"FineTuneJob {job_name!r} has no evaluation results (status.evaluation.passed is unset)"
        else:
            message = f"FineTuneJob {job_name!r} did not pass its gates (status.evaluation.passed is not true)"
        return Blocked("GatesNotPassed", message, "Failed")
    artifact = status.get("artifact") or {}
    if not artifact.get("uri"):
        return Blocked(
            "ArtifactMissing", f"FineTuneJob {job_name!r} Succeeded but has no status.artifact.uri", "Failed"
        )
    if need_kind and artifact.get("kind") != need_kind:
        return Blocked(
            "ArtifactMissing",
            f"FineTuneJob {job_name!r} produced a {artifact.get('kind')!r} artifact, not an {need_kind}",
            "Failed",
        )
    return None


def _completion(job: Mapping[str, Any]) -> str:
    return str(_status(job).get("completionTime") or "")


def promoted_jobs(md_name: str, jobs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Jobs with spec.deployTo naming this deployment, whose artifact may be served, newest first."""
    out = [
        name
        for name, job in jobs.items()
        if ((job.get("spec") or {}).get("deployTo") or {}).get("name") == md_name
        and job_blocker(name, job, "") is None
    ]
    return sorted(out, key=lambda n: (_completion(jobs[n]), n), reverse=True)


def _join(uri: str, sub: str) -> str:
    return uri.rstrip("/") + "/" + sub


def _from_job(md: ModelDeployment, job_name: str, job: Mapping[str, Any]) -> ResolvedModel:
    md_name = md.metadata["name"]
    artifact = _status(job)["artifact"]
    base = (job.get("spec") or {}).get("baseModel") or {}
    trust = bool(base.get("trustRemoteCode", False))
    if artifact.get("kind") == "adapter":
        base_uri = md.spec.model.base_model or base.get("uri")
        return ResolvedModel(
            uri=base_uri,
            served_name=f"{md_name}-base",
            adapter=LoraModule(md_name, _join(artifact["uri"], "adapter")),
            digest=artifact.get("digest"),
            trust_remote_code=trust,
        )
    return ResolvedModel(
        uri=_join(artifact["uri"], "merged"), served_name=md_name, digest=artifact.get("digest"), trust_remote_code=trust
    )


@dataclass(frozen=True)
class ModelChoice:
    model: ResolvedModel | None
    source: str = ""
    """`FineTuneJob/<name>` or `uri`."""
    blocked: Blocked | None = None


def resolve_model(md: ModelDeployment, jobs: Mapping[str, Mapping[str, Any]]) -> ModelChoice:
    """The newest servable of: the referenced job, jobs promoting themselves with deployTo; else a URI."""
    md_name = md.metadata["name"]
    namespace = md.metadata.get("namespace", "default")
    candidates = promoted_jobs(md_name, jobs)
    ref = md.spec.model.fine_tune_job_ref
    blocked = None
    if ref is not None:
        blocked = job_blocker(ref.name, jobs.get(ref.name), namespace)
        if blocked is None and ref.name not in candidates:
            candidates = sorted([*candidates, ref.name], key=lambda n: (_completion(jobs[n]), n), reverse=True)
    if candidates:
        name = candidates[0]
        job = jobs[name]
        model = _from_job(md, name, job)
        if not model.uri:
            return ModelChoice(None, blocked=Blocked(
                "ArtifactMissing",
                f"FineTuneJob {name!r} produced an adapter but its base model is unknown; set spec.model.baseModel",
                "Failed",
            ))
        return ModelChoice(model, f"FineTuneJob/{name}")
    if blocked is not None:
        return ModelChoice(None, blocked=blocked)
    return ModelChoice(ResolvedModel(uri=md.spec.model.uri or "", served_name=md_name), "uri")


@dataclass(frozen=True)
class DesiredAdapter:
    name: str
    uri: str
    digest: str | None = None


def resolve_adapters(
    md: ModelDeployment, jobs: Mapping[str, Mapping[str, Any]]
) -> tuple[list[DesiredAdapter], list[str]]:
    """spec.adapters as URIs, and a message for each adapter that cannot be served yet."""
    namespace = md.metadata.get("namespace", "default")
    ready, waiting = [], []
    for adapter in md.spec.adapters or []:
        if adapter.uri is not None:
            ready.append(DesiredAdapter(adapter.name, adapter.uri))
            continue
        job_name = adapter.fine_tune_job_ref.name  # type: ignore[union-attr]
        job = jobs.get(job_name)
        blocked = job_blocker(job_name, job, namespace, need_kind="adapter")
        if blocked is not None:
            waiting.append(f"adapter {adapter.name!r}: {blocked.message}")
            continue
        artifact = _status(job)["artifact"]  # type: ignore[arg-type]
        ready.append(DesiredAdapter(adapter.name, _join(artifact["uri"], "adapter"), artifact.get("digest")))
    return ready, waiting


# ----------------------------------------------------------------------------- adapters and canary


@dataclass
class AdapterPlan:
    """Adapter state after applying the spec, the canary annotation and the strategy."""

    stable: dict[str, str]
    """Adapter name -> URI of the version that serves its traffic."""
    canary: dict[str, Any] | None
    """status.canary on the wire, or None."""
    rolled_back: dict[str, str]
    """Adapter name -> URI refused by a rollback (not canaried again while the spec keeps it)."""
    notes: list[str] = field(default_factory=list)
    """What changed, for Events and the Progressing message."""
    annotation_done: bool = False
    """The canary annotation was acted on and should be removed."""
    held: list[str] = field(default_factory=list)
    """Versions waiting for something (another canary): a state, not a transition."""

    @property
    def serve(self) -> dict[str, str]:
        """Served name -> URI loaded into every pod (canaries under `<name>-canary`)."""
        out = dict(self.stable)
        if self.canary:
            out[self.canary["adapter"] + CANARY_SUFFIX] = self.canary["uri"]
        return out

    @property
    def routes(self) -> list[CanaryRoute]:
        if not self.canary:
            return []
        name = self.canary["adapter"]
        return [CanaryRoute(name, name + CANARY_SUFFIX, int(self.canary["weight"]))]


def plan_adapters(
    desired: Sequence[DesiredAdapter],
    *,
    stable: Mapping[str, str],
    canary: Mapping[str, Any] | None,
    strategy: str,
    weight: int,
    action: str | None,
    rolled_back: Mapping[str, str],
) -> AdapterPlan:
    """Apply one reconcile step of the adapter rollout. Pure and idempotent on its own output."""
    plan = AdapterPlan(stable={}, canary=dict(canary) if canary else None, rolled_back={})
    wanted = {a.name: a.uri for a in desired}
    if action not in (None, "", "promote", "rollback"):
        plan.notes.append(f"ignored annotation {CANARY_ANNOTATION}={action!r}: use promote or rollback")
        plan.annotation_done = True
        action = None

    if plan.canary:
        name = plan.canary["adapter"]
        if action == "promote":
            plan.notes.append(
                f"canary of {name!r} promoted: {plan.canary['uri']} replaces {plan.canary.get('previousUri')}"
            )
            stable = {**stable, name: plan.canary["uri"]}
            plan.canary = None
            plan.annotation_done = True
        elif action == "rollback":
            plan.notes.append(
                f"canary of {name!r} rolled back: {plan.canary['uri']} refused, {plan.canary.get('previousUri')} kept"
            )
            plan.rolled_back[name] = plan.canary["uri"]
            plan.canary = None
            plan.annotation_done = True
        elif name not in wanted:
            plan.notes.append(f"canary of {name!r} ended: the adapter was removed from the spec")
            plan.canary = None
        elif wanted[name] == stable.get(name):
            plan.notes.append(f"canary of {name!r} cancelled: the spec is back on the current version")
            plan.canary = None
        else:
            if wanted[name] != plan.canary["uri"]:
                plan.notes.append(f"canary of {name!r} now runs {wanted[name]}")
            plan.canary["uri"] = wanted[name]
            plan.canary["weight"] = weight
    elif action in ("promote", "rollback"):
        plan.notes.append(f"ignored annotation {CANARY_ANNOTATION}={action}: no canary is running")
        plan.annotation_done = True

    for name, uri in wanted.items():
        previous = stable.get(name)
        refused = plan.rolled_back.get(name) or rolled_back.get(name)
        if refused is not None and refused == uri:
            plan.rolled_back[name] = refused  # still refused while the spec names it
        if previous is None:
            plan.stable[name] = uri
            plan.notes.append(f"adapter {name!r} added: {uri}")
        elif previous == uri or refused == uri:
            plan.stable[name] = previous
        elif plan.canary and plan.canary["adapter"] == name:
            plan.stable[name] = previous
        elif strategy == "Canary" and plan.canary is None:
            plan.stable[name] = previous
            plan.canary = {"adapter": name, "weight": weight, "uri": uri, "previousUri": previous}
            plan.notes.append(f"canary of {name!r} started: {weight}% to {uri}")
        elif strategy == "Canary":
            plan.stable[name] = previous
            plan.held.append(f"adapter {name!r} waits: the canary of {plan.canary['adapter']!r} runs first")
        else:
            plan.stable[name] = uri
            plan.notes.append(f"adapter {name!r} replaced: {uri}")
    for name in stable:
        if name not in wanted:
            plan.notes.append(f"adapter {name!r} removed")
    return plan


def update_revisions(
    revisions: Mapping[str, Mapping[str, str]], old_stable: Mapping[str, str], new_stable: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Remember, per adapter, the version the current one replaced (kept after a promotion)."""
    out = {name: dict(rev) for name, rev in revisions.items() if name in new_stable}
    for name, uri in new_stable.items():
        previous = old_stable.get(name)
        if previous is not None and previous != uri:
            out[name] = {"current": uri, "previous": previous}
    return out


def adapter_status(
    plan: AdapterPlan,
    desired: Sequence[DesiredAdapter],
    pod_states: Mapping[str, Mapping[str, tuple[str, str]]],
) -> list[dict[str, Any]]:
    """status.adapters: each stable adapter (and a canary) with its per-pod state."""
    digests = {a.name: a.digest for a in desired}
    out = []
    for served, uri in sorted(plan.serve.items()):
        entry: dict[str, Any] = {"name": served, "uri": uri}
        base_name = served[: -len(CANARY_SUFFIX)] if plan.canary and served == plan.canary["adapter"] + CANARY_SUFFIX else served
        digest = digests.get(base_name) if uri == next((a.uri for a in desired if a.name == base_name), None) else None
        if digest:
            entry["digest"] = digest
        pods = [
            {"pod": pod, "state": states[served][0], **({"message": states[served][1]} if states[served][1] else {})}
            for pod, states in sorted(pod_states.items())
            if served in states
        ]
        if pods:
            entry["pods"] = pods
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- conditions


def blocked_conditions(blocked: Blocked) -> list[dict[str, Any]]:
    return [
        condition("Ready", False, blocked.reason, blocked.message),
        condition("Progressing", blocked.reason == "WaitingForTraining", blocked.reason, blocked.message),
        condition("Degraded", False, blocked.reason, ""),
    ]


@dataclass(frozen=True)
class DeploymentHealth:
    ready: int
    desired: int
    updated: int
    available: bool
    stalled: str | None
    """A reason when the rollout cannot progress (ProgressDeadlineExceeded, ReplicaFailure)."""
    observed: bool = True
    """The controller has seen the latest spec (status.observedGeneration >= generation)."""


def deployment_health(deployment: Mapping[str, Any] | None) -> DeploymentHealth | None:
    if deployment is None:
        return None
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    stalled = None
    available = False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False":
            stalled = f"{cond.get('reason', 'ProgressDeadlineExceeded')}: {cond.get('message', '')}".rstrip(": ")
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            stalled = f"{cond.get('reason', 'ReplicaFailure')}: {cond.get('message', '')}".rstrip(": ")
        if cond.get("type") == "Available" and cond.get("status") == "True":
            available = True
    ready = int(status.get("readyReplicas") or 0)
    generation = (deployment.get("metadata") or {}).get("generation")
    observed_generation = status.get("observedGeneration")
    observed = generation is None or (observed_generation is not None and observed_generation >= generation)
    return DeploymentHealth(
        ready=ready,
        desired=desired,
        updated=int(status.get("updatedReplicas") or 0),
        available=available or ready > 0,
        stalled=stalled,
        observed=observed,
    )


def serving_conditions(
    health: DeploymentHealth | None,
    *,
    adapter_failures: Sequence[str] = (),
    adapters_loading: Sequence[str] = (),
    waiting: Sequence[str] = (),
    notes: Sequence[str] = (),
    canary: Mapping[str, Any] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """(phase, [Ready, Progressing, Degraded]) from the Deployment and the engine."""
    if health is None:
        return "Deploying", [
            condition("Ready", False, "Deploying", "the Deployment is being created"),
            condition("Progressing", True, "Deploying", "the Deployment is being created"),
            condition("Degraded", False, "Deploying"),
        ]
    if health.desired == 0:
        message = "spec.replicas is 0: no engine runs"
        return "Pending", [
            condition("Ready", False, "ScaledToZero", message),
            condition("Progressing", False, "ScaledToZero", message),
            condition("Degraded", False, "ScaledToZero"),
        ]
    replicas = f"{health.ready}/{health.desired} replicas ready"
    problems = [*adapter_failures]
    if health.stalled:
        problems.insert(0, health.stalled)
    if health.ready > 0:
        ready = condition("Ready", True, "Serving", replicas)
    elif health.stalled:
        ready = condition("Ready", False, "RolloutStalled", f"{replicas}; {health.stalled}")
    else:
        ready = condition("Ready", False, "Starting", f"{replicas}; the engine is loading the model")
    pods_rolling = health.ready < health.desired or health.updated < health.desired or not health.observed
    rolling = pods_rolling or bool(adapters_loading)
    in_progress = rolling or canary is not None
    progress_parts = [replicas] if pods_rolling else []
    if not health.observed:
        progress_parts.append("the new pod template is not rolled out yet")
    if adapters_loading:
        progress_parts.append("loading adapters: " + ", ".join(adapters_loading))
    if canary is not None:
        analysis = canary.get("analysis")
        then = (f"analysis: {analysis.get('windowsPassed', 0)} of {analysis.get('windowsNeeded')} windows passed"
                if analysis else f"annotate {CANARY_ANNOTATION}=promote or rollback")
        progress_parts.append(
            f"canary of {canary['adapter']!r}: {canary['weight']}% to {canary['uri']} "
            f"(previous {canary.get('previousUri')}); {then}"
        )
    progress_parts += list(waiting) + list(notes)
    if health.stalled:
        progress_reason = "RolloutStalled"
    elif rolling:
        progress_reason = "RollingOut"
    elif canary is not None:
        progress_reason = "Canary"
    else:
        progress_reason = "Stable"
    progressing = condition("Progressing", in_progress and not health.stalled, progress_reason, "; ".join(progress_parts))
    degraded = condition(
        "Degraded",
        bool(problems),
        ("RolloutStalled" if health.stalled else "AdapterLoadFailed") if problems else "Healthy",
        "; ".join(problems),
    )
    if health.ready == 0:
        phase = "Failed" if health.stalled else "Deploying"
    elif problems or health.ready < health.desired and health.stalled:
        phase = "Degraded"
    elif rolling:
        phase = "Deploying"
    else:
        phase = "Ready"
    return phase, [ready, progressing, degraded]
