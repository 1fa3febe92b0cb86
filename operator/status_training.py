"""Pure: a FineTuneJob's children (RayJob or Job, and their pods) -> its status.

The phase is for humans, the conditions for machines, and a failure carries the real
cause (Unschedulable with the scheduler's message, ImagePullBackOff, OOMKilled,
DeadlineExceeded, BackoffLimitExceeded) instead of a generic "Failed". The trainer owns
`progress`, `artifact` and `evaluation` (it patches them through its status sink); this
module never touches those and keeps a trainer-reported Evaluating phase while running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .conditions import remove_conditions, set_conditions, status_patch

CONDITION_TYPES = ("Accepted", "Running", "Succeeded", "Failed", "Suspended")
OWNED_KEYS = ("phase", "conditions", "observedGeneration", "rayJobName", "startTime", "completionTime", "attempts", "failure")
"""Status keys the operator writes; the rest belongs to the trainer."""

_IMAGE_PULL = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
_STARTED_DEPLOYMENT = ("Initializing", "Waiting", "Running", "Retrying", "Complete", "Failed")


@dataclass(frozen=True)
class Cause:
    """Why something is stuck or failed, with the message from the component that knows."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What the operator read from the cluster for one FineTuneJob."""

    engine: str = "RayJob"
    workload: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


@dataclass(frozen=True)
class State:
    phase: str
    running: tuple[bool, str, str]
    suspended: tuple[bool, str, str] = (False, "NotSuspended", "")
    succeeded: tuple[bool, str, str] = (False, "NotFinished", "")
    failed: tuple[bool, str, str] = (False, "NoFailure", "")
    failure: Cause | None = None
    started: bool = False
    finished: bool = False
    attempts: int | None = None
    start_time: str | None = None
    end_time: str | None = None


# ----------------------------------------------------------------------------- pods


def pod_cause(pods: Sequence[Mapping[str, Any]]) -> Cause | None:
    """The most telling problem among the pods: OOMKilled > image pull > unschedulable > crash loop."""
    found: dict[str, Cause] = {}
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            for state_key in ("state", "lastState"):
                state = cs.get(state_key) or {}
                terminated = state.get("terminated") or {}
                if terminated.get("reason") == "OOMKilled":
                    found.setdefault("OOMKilled", Cause(
                        "OOMKilled",
                        f"container {cs.get('name')} of pod {name} was killed for exceeding its memory limit "
                        "(raise spec.resources.memory or lower hyperparameters.batchSize)",
                    ))
                waiting = state.get("waiting") or {}
                if waiting.get("reason") in _IMAGE_PULL:
                    found.setdefault("ImagePullBackOff", Cause(
                        "ImagePullBackOff", f"pod {name}: {waiting.get('message') or waiting['reason']}"))
                elif waiting.get("reason") == "CrashLoopBackOff":
                    found.setdefault("CrashLoopBackOff", Cause(
                        "CrashLoopBackOff", f"pod {name}: {waiting.get('message') or 'container keeps crashing'}"))
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                found.setdefault("Unschedulable", Cause("Unschedulable", f"pod {name}: {cond.get('message', '')}".strip()))
    for reason in ("OOMKilled", "ImagePullBackOff", "Unschedulable", "CrashLoopBackOff"):
        if reason in found:
            return found[reason]
    return None


# ----------------------------------------------------------------------------- workloads


def _suspended_by_user() -> State:
    return State(
        phase="Suspended",
        running=(False, "Suspended", "suspended by spec.suspend"),
        suspended=(True, "Suspended", "the Ray cluster is deleted; checkpoints are kept and unsuspending resumes from the last one"),
    )


def rayjob_state(rayjob: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, suspend: bool,
                 backoff_limit: int, previous_phase: str | None) -> State:
    """State of a FineTuneJob trained by a KubeRay RayJob."""
    st = rayjob.get("status") or {}
    deployment = st.get("jobDeploymentStatus") or ""
    job_status = st.get("jobStatus") or ""
    failed = int(st.get("failed") or 0)
    succeeded = int(st.get("succeeded") or 0)
    active = deployment in ("Initializing", "Waiting", "Running", "Retrying")
    attempts = failed + succeeded + (1 if active and deployment != "Retrying" else 0) or None
    if deployment == "Retrying":
        attempts = failed + 1
    started = deployment in _STARTED_DEPLOYMENT
    common = dict(attempts=attempts, started=started, start_time=st.get("startTime"), end_time=st.get("endTime"))
    cause = pod_cause(pods)

    if suspend:
        return State(**{**_suspended_by_user().__dict__, **common})
    if deployment in ("Suspended", "Suspending"):
        return State(
            phase="Queued",
            running=(False, "Queued", "the RayJob is suspended by the cluster's queue (e.g. Kueue) until it is admitted"),
            suspended=(True, "Queued", "waiting for admission"),
            **common,
        )
    if deployment == "Complete" and job_status == "SUCCEEDED":
        return State(phase="Succeeded", running=(False, "Completed", "training finished"),
                     succeeded=(True, "Completed", "training, evaluation and export finished"), finished=True, **common)
    # ValidationFailed: KubeRay refused the RayJob itself (reason and message say why).
    if deployment in ("Failed", "ValidationFailed") or (deployment == "Complete" and job_status in ("FAILED", "STOPPED")):
        failure = rayjob_failure(st, cause, backoff_limit=backoff_limit, failed=failed)
        return State(phase="Failed", running=(False, failure.reason, failure.message),
                     failed=(True, failure.reason, failure.message), failure=failure, finished=True, **common)
    if deployment == "Retrying":
        msg = f"attempt {failed + 1} of {backoff_limit + 1} starts from the last checkpoint"
        if cause:
            msg += f"; previous attempt: {cause.reason}: {cause.message}"
        return State(phase="Provisioning", running=(False, "Retrying", msg), **common)
    if deployment == "Running" and job_status == "RUNNING":
        phase = "Evaluating" if previous_phase == "Evaluating" else "Training"
        return State(phase=phase, running=(True, phase, "the trainer is running on the Ray cluster"), **common)
    if cause is not None:
        return State(phase="Provisioning", running=(False, cause.reason, cause.message), **common)
    if started:
        return State(phase="Provisioning", running=(False, "Provisioning", "the Ray cluster is starting"), **common)
    return State(phase="Pending", running=(False, "Pending", "waiting for KubeRay to pick up the RayJob"), **common)


def rayjob_failure(st: Mapping[str, Any], cause: Cause | None, *, backoff_limit: int, failed: int) -> Cause:
    reason = st.get("reason") or ""
    message = st.get("message") or ""
    if reason == "DeadlineExceeded":
        return Cause("DeadlineExceeded", message or "spec.activeDeadlineSeconds passed before training finished")
    if cause is not None and cause.reason != "Unschedulable":
        return cause
    if backoff_limit > 0 and failed > backoff_limit:
        last = f"; last attempt: {cause.reason}: {cause.message}" if cause else (f"; last attempt: {message}" if message else "")
        return Cause("BackoffLimitExceeded", f"{failed} attempts failed (backoffLimit {backoff_limit}){last}")
    if cause is not None:
        return cause
    return Cause(reason or "TrainerError", message or "the training job failed; see the RayJob's logs")


def batch_job_state(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, suspend: bool,
                    previous_phase: str | None) -> State:
    """State of a FineTuneJob trained by a plain batch/v1 Job (engine Job)."""
    st = job.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    failed = int(st.get("failed") or 0)
    active = int(st.get("active") or 0)
    common = dict(attempts=(failed + (1 if active or "Complete" in conds else 0)) or None,
                  started=bool(st.get("startTime")), start_time=st.get("startTime"), end_time=st.get("completionTime"))
    cause = pod_cause(pods)
    if suspend:
        return State(**{**_suspended_by_user().__dict__, **common})
    if "Complete" in conds:
        return State(phase="Succeeded", running=(False, "Completed", "training finished"),
                     succeeded=(True, "Completed", "training, evaluation and export finished"), finished=True, **common)
    if "Failed" in conds:
        cond = conds["Failed"]
        if cond.get("reason") == "DeadlineExceeded" or cause is None:
            failure = Cause(cond.get("reason") or "TrainerError", cond.get("message") or "the training Job failed")
        else:
            failure = cause
        return State(phase="Failed", running=(False, failure.reason, failure.message),
                     failed=(True, failure.reason, failure.message), failure=failure, finished=True, **common)
    if "Suspended" in conds:
        return State(phase="Queued", running=(False, "Queued", "the Job is suspended by the cluster's queue until admitted"),
                     suspended=(True, "Queued", "waiting for admission"), **common)
    running_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if running_pods and cause is None:
        phase = "Evaluating" if previous_phase == "Evaluating" else "Training"
        return State(phase=phase, running=(True, phase, "the trainer pod is running"), **common)
    if cause is not None:
        return State(phase="Provisioning", running=(False, cause.reason, cause.message), **common)
    return State(phase="Provisioning" if active else "Pending", running=(False, "Provisioning", "the trainer pod is starting"), **common)


# ----------------------------------------------------------------------------- status


def desired_status(body: Mapping[str, Any], observed: Observed, *, now: str,
                   extra: Sequence[Mapping[str, Any]] = (), drop: Sequence[str] = ()) -> dict[str, Any]:
    """The operator-owned part of the status for an accepted FineTuneJob.

    `extra` conditions are set too (e.g. UpdateRejected); `drop` lists condition types to remove.
    """
    spec = body.get("spec") or {}
    current = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    suspend = bool(spec.get("suspend", False))
    previous = current.get("phase")
    if observed.workload is None:
        state = _suspended_by_user() if suspend else State(
            phase="Pending", running=(False, "Pending", "creating the training resources"))
    elif observed.engine == "Job":
        state = batch_job_state(observed.workload, observed.pods, suspend=suspend, previous_phase=previous)
    else:
        state = rayjob_state(observed.workload, observed.pods, suspend=suspend,
                             backoff_limit=int(spec.get("backoffLimit", 2)), previous_phase=previous)
    desired_conditions = [
        {"type": "Accepted", "status": "True", "reason": "Valid", "message": "the spec is valid and the training resources are rendered"},
        *[
            {"type": t, "status": "True" if value[0] else "False", "reason": value[1], "message": value[2]}
            for t, value in (("Running", state.running), ("Succeeded", state.succeeded),
                             ("Failed", state.failed), ("Suspended", state.suspended))
        ],
    ]
    status: dict[str, Any] = {
        "phase": state.phase,
        "conditions": set_conditions(
            remove_conditions(current.get("conditions"), drop), [*desired_conditions, *extra], generation=generation, now=now),
        "observedGeneration": generation,
        "rayJobName": observed.workload["metadata"]["name"] if observed.workload else current.get("rayJobName"),
        "attempts": state.attempts if state.attempts is not None else current.get("attempts"),
        "failure": {"reason": state.failure.reason, "message": state.failure.message} if state.failure else None,
    }
    if current.get("startTime"):
        status["startTime"] = current["startTime"]
    elif state.started:
        status["startTime"] = state.start_time or now
    if state.finished:
        status["completionTime"] = current.get("completionTime") or state.end_time or now
    else:
        status["completionTime"] = None
    return status


def rejected_status(body: Mapping[str, Any], reason: str, message: str, *, now: str, failed: bool) -> dict[str, Any]:
    """Accepted=False (invalid spec, KubeRay missing): no children, the reason in the status."""
    current = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    conds = [
        {"type": "Accepted", "status": "False", "reason": reason, "message": message},
        {"type": "Running", "status": "False", "reason": reason, "message": ""},
    ]
    if failed:
        conds.append({"type": "Failed", "status": "True", "reason": reason, "message": message})
    return {
        "phase": "Failed" if failed else "Pending",
        "conditions": set_conditions(current.get("conditions"), conds, generation=generation, now=now),
        "observedGeneration": generation,
        "failure": {"reason": reason, "message": message} if failed else None,
    }


def training_status_patch(body: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The status merge patch, or None when the status already says all that."""
    return status_patch(body.get("status"), desired)
