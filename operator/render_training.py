"""Pure rendering of a FineTuneJob into its training children: ConfigMap, RayJob or Job.

Input is the FineTuneJob as stored (for name, namespace, uid, labels) plus the validated
model and the operator settings; output is plain dicts ready to apply. No I/O, so every
change shows up in the golden files under tests/operator/golden/.
"""

from __future__ import annotations

import json

import shlex
from collections.abc import Mapping
from typing import Any


from kubetune.api import FineTuneJob
from kubetune.api.finetunejob import MAX_LORA_RANK_ANNOTATION
from kubetune.api.uris import parse_uri

from .render_common import (
    KUEUE_QUEUE_LABEL,
    LABEL_FINETUNEJOB,
    child_name,
    container_security_context,
    object_meta,
    passthrough_labels,
    pod_security_context,
    standard_labels,
)
from .settings import Settings

CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = "finetunejob.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
ENTRYPOINT_ARGV = ("kubetune", "train", "--config", CONFIG_PATH)
"""Fixed argv: no user string ever reaches a shell (KubeRay's entrypoint is a string)."""
RAYJOB_NAME_MAX = 47
"""KubeRay derives RayCluster and Service names from the RayJob's and limits it to 47."""
GPU_RESOURCE = "nvidia.com/gpu"


def config_map_name(job_name: str) -> str:
    return child_name(job_name, "config")


def workload_name(job_name: str, engine: str = "RayJob") -> str:
    """Name of the RayJob (or Job) of a FineTuneJob."""
    return child_name(job_name, "train", max_length=RAYJOB_NAME_MAX if engine == "RayJob" else 63)


def suspend_owned_by_kueue(body: Mapping[str, Any]) -> bool:
    """Kueue admits workloads by unsuspending them: a queued job's workload starts suspended.

    The operator then sets `suspend` only at creation and when the user suspends, so a
    re-apply (spec edit, operator restart) never unsuspends a workload Kueue has not admitted.
    """
    return KUEUE_QUEUE_LABEL in (body["metadata"].get("labels") or {})


def service_account_name(job_name: str) -> str:
    return child_name(job_name, "trainer")


def training_labels(body: Mapping[str, Any], component: str) -> dict[str, str]:
    """Labels of every training child: app.kubernetes.io/*, the job label, Kueue pass-through."""
    meta = body["metadata"]
    return standard_labels(
        name="kubetune-trainer",
        component=component,
        instance=meta["name"],
        extra={LABEL_FINETUNEJOB: meta["name"], **passthrough_labels(meta.get("labels"))},
    )


def training_manifest(body: Mapping[str, Any], job: FineTuneJob, *, max_lora_rank: int | None = None) -> dict[str, Any]:
    """The FineTuneJob as the trainer reads it: a manifest with every default filled in, and
    the serving engine's max LoRA rank when the job promotes into a ModelDeployment."""
    metadata: dict[str, Any] = {"name": body["metadata"]["name"], "namespace": body["metadata"]["namespace"]}
    if max_lora_rank is not None:
        metadata["annotations"] = {MAX_LORA_RANK_ANNOTATION: str(max_lora_rank)}
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "metadata": metadata,
        "spec": job.spec.to_wire(),
    }


def render_config_map(body: Mapping[str, Any], job: FineTuneJob, *, max_lora_rank: int | None = None) -> dict[str, Any]:
    manifest = training_manifest(body, job, max_lora_rank=max_lora_rank)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(body, config_map_name(body["metadata"]["name"]), training_labels(body, "config")),
        # JSON is YAML (the trainer reads it with a YAML loader), and writing it is 50x
        # cheaper than PyYAML's representer: that mattered with hundreds of jobs at once.
        # One line: json's C encoder does not indent.
        "data": {CONFIG_FILE: json.dumps(manifest, ensure_ascii=False) + "\n"},
    }


# ----------------------------------------------------------------------------- pods


def pvc_claims(job: FineTuneJob) -> dict[str, bool]:
    """Claims referenced by pvc:// URIs -> whether the pods must write to it."""
    spec = job.spec
    sources = [spec.base_model.uri, *(d.uri for d in spec.datasets)]
    if spec.evaluation.prompts_uri:
        sources.append(spec.evaluation.prompts_uri)
    if spec.evaluation.safety and spec.evaluation.safety.prompt_set not in ("builtin", ""):
        sources.append(spec.evaluation.safety.prompt_set)
    sinks = [spec.output.uri] + ([spec.checkpointing.uri] if spec.checkpointing.uri else [])
    claims: dict[str, bool] = {}
    for uri, writable in [(u, False) for u in sources] + [(u, True) for u in sinks]:
        try:
            parsed = parse_uri(uri)
        except ValueError:
            continue  # already reported by validation
        if parsed.scheme == "pvc" and parsed.claim:
            claims[parsed.claim] = claims.get(parsed.claim, False) or writable
    return dict(sorted(claims.items()))


def uses_s3(job: FineTuneJob) -> bool:
    """Whether any URI of the job is on S3 (its pods then get the S3 credentials and endpoint)."""
    spec = job.spec
    safety = spec.evaluation.safety
    uris = [spec.base_model.uri, *(d.uri for d in spec.datasets), spec.output.uri,
            spec.checkpointing.uri or "", spec.evaluation.prompts_uri or "", safety.prompt_set if safety else ""]
    return any(uri.startswith("s3://") for uri in uris)


def _s3_env(job: FineTuneJob, settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, envFrom) for S3: the credentials Secret by reference, never its values."""
    if not uses_s3(job):
        return [], []
    env = [{"name": "AWS_ENDPOINT_URL_S3", "value": settings.s3_endpoint_url}] if settings.s3_endpoint_url else []
    env_from = [{"secretRef": {"name": settings.s3_credentials_secret}}] if settings.s3_credentials_secret else []
    return env, env_from


def _volumes(body: Mapping[str, Any], job: FineTuneJob, settings: Settings) -> tuple[list[dict], list[dict]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(body["metadata"]["name"])}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(job.spec.resources.shared_memory)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for index, (claim, writable) in enumerate(pvc_claims(job).items()):
        volumes.append({"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}})
        mounts.append({"name": f"pvc-{index}", "mountPath": f"{settings.pvc_root}/{claim}", "readOnly": not writable})
    if settings.model_cache_claim:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": settings.model_cache_claim, "readOnly": True}})
        mounts.append({"name": "model-cache", "mountPath": settings.model_cache, "readOnly": True})
    return volumes, mounts


def _env(body: Mapping[str, Any], job: FineTuneJob, settings: Settings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "KUBETUNE_JOB_NAME", "value": body["metadata"]["name"]},
        {"name": "KUBETUNE_JOB_NAMESPACE", "value": body["metadata"]["namespace"]},
        {"name": "KUBETUNE_PVC_ROOT", "value": settings.pvc_root},
        {"name": "KUBETUNE_MODEL_CACHE", "value": settings.model_cache},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "HF_DATASETS_OFFLINE", "value": "1"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        {"name": "HOME", "value": "/tmp"},
    ]
    ref = job.spec.hf_token_secret_ref
    if ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if job.spec.resources.gpus_per_worker > 0:  # GPU-only speed options; CPU pods would ignore them
        if settings.trainer_gpu_attention != "sdpa":
            env.append({"name": "KUBETUNE_ATTENTION", "value": settings.trainer_gpu_attention})
        if settings.trainer_gpu_compile_blocks:
            env.append({"name": "KUBETUNE_COMPILE_BLOCKS", "value": "1"})
    if settings.trainer_forward_tokens is not None:
        env.append({"name": "KUBETUNE_FORWARD_TOKENS", "value": str(settings.trainer_forward_tokens)})
    return env


def _worker_resources(job: FineTuneJob) -> dict[str, Any]:
    res = job.spec.resources
    amounts: dict[str, Any] = {"cpu": str(res.cpu), "memory": str(res.memory)}
    if res.gpus_per_worker:
        amounts[GPU_RESOURCE] = str(res.gpus_per_worker)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_spec(
    body: Mapping[str, Any],
    job: FineTuneJob,
    settings: Settings,
    *,
    container_name: str,
    resources: dict[str, Any],
    placement: bool,
    command: list[str] | None = None,
) -> dict[str, Any]:
    res = job.spec.resources
    volumes, mounts = _volumes(body, job, settings)
    s3_env, s3_env_from = _s3_env(job, settings)
    container: dict[str, Any] = {
        "name": container_name,
        "image": res.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": _env(body, job, settings) + s3_env,
        "resources": resources,
        "volumeMounts": mounts,
        # Ray, HF and torch write only under /tmp (HOME) and /dev/shm, both emptyDirs.
        "securityContext": {**container_security_context(), "readOnlyRootFilesystem": True},
    }
    if s3_env_from:
        container["envFrom"] = s3_env_from
    if command:
        container["command"] = command
    spec: dict[str, Any] = {
        "serviceAccountName": service_account_name(body["metadata"]["name"]),
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if res.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s.name} for s in res.image_pull_secrets]
    if res.tolerations:
        spec["tolerations"] = [t.to_wire() for t in res.tolerations]
    if res.priority_class_name:
        spec["priorityClassName"] = res.priority_class_name
    if placement:
        if res.node_selector:
            spec["nodeSelector"] = dict(res.node_selector)
        if res.affinity:
            spec["affinity"] = res.affinity
    return spec


def _pod_template(body: Mapping[str, Any], role: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": training_labels(body, role)}, "spec": spec}


# ----------------------------------------------------------------------------- workloads


def render_rayjob(body: Mapping[str, Any], job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    """A KubeRay RayJob: a CPU-only head that runs the driver and N identical GPU workers."""
    spec = job.spec
    workers = spec.resources.workers
    head = _pod_spec(
        body, job, settings, container_name="ray-head", placement=False,
        resources={
            "requests": {"cpu": settings.head_cpu, "memory": settings.head_memory},
            "limits": {"cpu": settings.head_cpu, "memory": settings.head_memory},
        },
    )
    worker = _pod_spec(body, job, settings, container_name="ray-worker", resources=_worker_resources(job), placement=True)
    submitter = _pod_spec(
        body, job, settings, container_name="ray-job-submitter", placement=False,
        resources={"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    )
    submitter["restartPolicy"] = "Never"
    rayjob_spec: dict[str, Any] = {
        "entrypoint": shlex.join(ENTRYPOINT_ARGV),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "backoffLimit": spec.backoff_limit,
        "suspend": spec.suspend or suspend_owned_by_kueue(body),
        "submissionMode": "K8sJobMode",
        "submitterPodTemplate": _pod_template(body, "submitter", submitter),
        "rayClusterSpec": {
            "rayVersion": settings.ray_version,
            "headGroupSpec": {
                # The head only schedules; training runs on the workers.
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                "template": _pod_template(body, "head", head),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": workers,
                    "minReplicas": workers,
                    "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": _pod_template(body, "worker", worker),
                }
            ],
        },
    }
    if spec.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    name = body["metadata"]["name"]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": object_meta(body, workload_name(name), training_labels(body, "training")),
        "spec": rayjob_spec,
    }


def render_batch_job(body: Mapping[str, Any], job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    """engine Job: one pod runs the same entrypoint; the trainer starts Ray inside the pod."""
    spec = job.spec
    pod = _pod_spec(
        body, job, settings, container_name="trainer", resources=_worker_resources(job), placement=True,
        command=list(ENTRYPOINT_ARGV),
    )
    pod["restartPolicy"] = "Never"
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "suspend": spec.suspend or suspend_owned_by_kueue(body),
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "template": _pod_template(body, "worker", pod),
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    name = body["metadata"]["name"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(body, workload_name(name, "Job"), training_labels(body, "training")),
        "spec": job_spec,
    }


def render_workload(body: Mapping[str, Any], job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    """The RayJob or the Job, by spec.engine."""
    if job.spec.engine == "Job":
        return render_batch_job(body, job, settings)
    return render_rayjob(body, job, settings)
