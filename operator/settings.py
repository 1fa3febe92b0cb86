"""Operator settings, read once from the environment (12-factor, as a Deployment sets them)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubetune.common import images

DEFAULT_TRAINER_IMAGE = images.trainer_ref(images.default_version())
"""The GPU trainer image of this release (kubetune.common.images is the naming scheme)."""
DEFAULT_VLLM_IMAGE = images.VLLM_IMAGE
DEFAULT_GATEWAY_IMAGE = images.image_ref("gateway", images.default_version())
DEFAULT_RAY_VERSION = "2.50.0"


class SettingsError(ValueError):
    """An environment variable has a value the operator cannot use; the message names it."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _forward_tokens(env: Mapping[str, str], name: str) -> int | None:
    if (env.get(name) or "auto").strip().lower() == "auto":
        return None
    return _int(env, name, 0)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


TRAINER_ATTENTION_CHOICES = ("sdpa", "flex_attention")
"""What the trainer's KUBETUNE_ATTENTION accepts (kubetune.trainer.loop.ATTENTION_CHOICES)."""


def _image(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not images.is_image_reference(raw):
        raise SettingsError(f"{name}={raw!r}: not an image reference "
                            "([registry/]repository[:tag][@sha256:<64 hex digits>])")
    return raw


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_LABEL_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
RESERVED_LABEL_PREFIXES = ("kubetune.io/", "app.kubernetes.io/", "ray.io/", "kueue.x-k8s.io/", "batch.kubernetes.io/")
"""Label domains kubetune, KubeRay, Kueue and the Job controller write themselves (selectors,
admission): not for extra labels."""
RESERVED_LABEL_KEYS = ("controller-uid", "job-name")
"""The Job controller's legacy selector labels on pod templates."""


def _labels(env: Mapping[str, str], name: str) -> dict[str, str]:
    """`k=v,k2=v2` as label syntax allows (checked here: a bad one would fail every child's create)."""
    labels: dict[str, str] = {}
    for pair in _list(env, name):
        key, sep, value = (part.strip() for part in pair.partition("="))
        prefix, slash, short = key.rpartition("/")
        if not sep or not short or not _LABEL_NAME.fullmatch(short) or (
                slash and (len(prefix) > 253 or not _LABEL_PREFIX.fullmatch(prefix))):
            raise SettingsError(f"{name}: {pair!r} is not key=value with a valid label key "
                                "([prefix/]name, name at most 63 letters, digits, '-', '_', '.')")
        if not _LABEL_NAME.fullmatch(value):
            raise SettingsError(f"{name}: the value of {key!r} is not a valid label value "
                                "(at most 63 letters, digits, '-', '_', '.', starting and ending alphanumeric)")
        if key.startswith(RESERVED_LABEL_PREFIXES) or key in RESERVED_LABEL_KEYS:
            raise SettingsError(f"{name}: {key!r} is a label Kubernetes controllers or kubetune set themselves "
                                f"(domains {', '.join(RESERVED_LABEL_PREFIXES)}; keys {', '.join(RESERVED_LABEL_KEYS)})")
        labels[key] = value
    return labels


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _secret_name(env: Mapping[str, str], name: str) -> str:
    value = (env.get(name) or "").strip()
    if value and not _DNS_SUBDOMAIN.fullmatch(value):
        raise SettingsError(f"{name}={value!r}: not a Secret name (lower-case letters, digits, '-', '.')")
    return value


def _endpoint(env: Mapping[str, str], name: str) -> str:
    value = (env.get(name) or "").strip()
    if value and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise SettingsError(f"{name}={value!r}: expected an http(s) URL such as http://minio.storage:9000")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the operator is configured with; `from_env()` builds it."""

    namespaces: tuple[str, ...] = ()
    """Watched namespaces (KUBETUNE_NAMESPACES, comma list); empty means cluster-wide."""
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Default trainer image (KUBETUNE_TRAINER_IMAGE); a job's resources.image wins."""
    vllm_image: str = DEFAULT_VLLM_IMAGE
    """vLLM server image (KUBETUNE_VLLM_IMAGE)."""
    gateway_image: str = DEFAULT_GATEWAY_IMAGE
    """Gateway image (KUBETUNE_GATEWAY_IMAGE)."""
    image_pull_policy: str = "IfNotPresent"
    """KUBETUNE_IMAGE_PULL_POLICY."""
    ray_version: str = DEFAULT_RAY_VERSION
    """rayVersion written into RayJobs (KUBETUNE_RAY_VERSION)."""
    head_cpu: str = "1"
    """CPU of the Ray head pod, which only schedules (KUBETUNE_HEAD_CPU)."""
    head_memory: str = "4Gi"
    """Memory of the Ray head pod (KUBETUNE_HEAD_MEMORY)."""
    pvc_root: str = "/mnt/pvc"
    """Where pvc:// claims are mounted in training pods (KUBETUNE_PVC_ROOT)."""
    model_cache: str = "/models"
    """Where hub-style model names are looked up in pods (KUBETUNE_MODEL_CACHE)."""
    model_cache_claim: str = ""
    """A PVC holding the model cache, mounted read-only at model_cache (KUBETUNE_MODEL_CACHE_PVC)."""
    ttl_seconds_after_finished: int = 3600
    """How long KubeRay keeps a finished Ray cluster (KUBETUNE_TTL_SECONDS_AFTER_FINISHED)."""
    resync_seconds: float = 30.0
    """Interval of the level-based timer that re-reads children (KUBETUNE_RESYNC_SECONDS)."""
    enable_keda: bool = False
    """Render KEDA ScaledObjects for serving autoscaling (KUBETUNE_ENABLE_KEDA)."""
    metrics_port: int = 8080
    """Prometheus metrics port (KUBETUNE_METRICS_PORT); 0 disables."""
    liveness_endpoint: str = "http://0.0.0.0:8081/healthz"
    """kopf's liveness endpoint (KUBETUNE_LIVENESS)."""
    log_format: str = "json"
    """json or plain (KUBETUNE_LOG_FORMAT)."""
    api_threads: int = 16
    """Kubernetes API requests in flight at once (KUBETUNE_API_THREADS; the name is historical)."""
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels put on every child and its pods (KUBETUNE_EXTRA_LABELS, k=v comma list), e.g. a
    team or cost centre for cost reports; labels kubetune sets itself keep their values."""
    trainer_gpu_attention: str = "sdpa"
    """Attention kernel of GPU training pods (KUBETUNE_TRAINER_ATTENTION: sdpa or flex_attention,
    which skips the tiles a packed batch masks out; see docs/training.md)."""
    trainer_gpu_compile_blocks: bool = False
    """torch.compile each transformer block in GPU training pods (KUBETUNE_TRAINER_COMPILE_BLOCKS)."""
    trainer_forward_tokens: int | None = None
    """Most tokens one training forward holds, in every training pod (KUBETUNE_TRAINER_FORWARD_TOKENS:
    auto, 0 for no limit, or a count); None (auto) leaves the trainer's default: 1024 on CPU, no
    limit on GPUs."""
    s3_credentials_secret: str = ""
    """Secret whose AWS_* keys become the environment of pods that read or write s3:// URIs
    (KUBETUNE_S3_SECRET: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN,
    AWS_REGION); empty: the pods' own identity (e.g. a cloud workload identity)."""
    s3_endpoint_url: str = ""
    """Endpoint of an S3-compatible store such as MinIO (KUBETUNE_S3_ENDPOINT_URL), set as
    AWS_ENDPOINT_URL_S3 in those pods; empty: AWS S3."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings; raises SettingsError naming the variable on a bad value."""
        env = os.environ if env is None else env
        extra = _labels(env, "KUBETUNE_EXTRA_LABELS")
        log_format = env.get("KUBETUNE_LOG_FORMAT", "json").strip() or "json"
        if log_format not in ("json", "plain"):
            raise SettingsError(f"KUBETUNE_LOG_FORMAT={log_format!r}: expected json or plain")
        attention = (env.get("KUBETUNE_TRAINER_ATTENTION") or "sdpa").strip()
        if attention not in TRAINER_ATTENTION_CHOICES:
            raise SettingsError(f"KUBETUNE_TRAINER_ATTENTION={attention!r}: expected one of "
                                f"{', '.join(TRAINER_ATTENTION_CHOICES)}")
        return cls(
            namespaces=_list(env, "KUBETUNE_NAMESPACES"),
            trainer_image=_image(env, "KUBETUNE_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
            vllm_image=_image(env, "KUBETUNE_VLLM_IMAGE", DEFAULT_VLLM_IMAGE),
            gateway_image=_image(env, "KUBETUNE_GATEWAY_IMAGE", DEFAULT_GATEWAY_IMAGE),
            image_pull_policy=env.get("KUBETUNE_IMAGE_PULL_POLICY") or "IfNotPresent",
            ray_version=env.get("KUBETUNE_RAY_VERSION") or DEFAULT_RAY_VERSION,
            head_cpu=env.get("KUBETUNE_HEAD_CPU") or "1",
            head_memory=env.get("KUBETUNE_HEAD_MEMORY") or "4Gi",
            pvc_root=env.get("KUBETUNE_PVC_ROOT") or "/mnt/pvc",
            model_cache=env.get("KUBETUNE_MODEL_CACHE") or "/models",
            model_cache_claim=env.get("KUBETUNE_MODEL_CACHE_PVC") or "",
            ttl_seconds_after_finished=_int(env, "KUBETUNE_TTL_SECONDS_AFTER_FINISHED", 3600),
            resync_seconds=_float(env, "KUBETUNE_RESYNC_SECONDS", 30.0, minimum=0.1),
            enable_keda=_bool(env, "KUBETUNE_ENABLE_KEDA", False),
            metrics_port=_int(env, "KUBETUNE_METRICS_PORT", 8080),
            liveness_endpoint=env.get("KUBETUNE_LIVENESS", "http://0.0.0.0:8081/healthz"),
            log_format=log_format,
            api_threads=_int(env, "KUBETUNE_API_THREADS", 16, minimum=1),
            extra_labels=extra,
            trainer_gpu_attention=attention,
            trainer_gpu_compile_blocks=_bool(env, "KUBETUNE_TRAINER_COMPILE_BLOCKS", False),
            trainer_forward_tokens=_forward_tokens(env, "KUBETUNE_TRAINER_FORWARD_TOKENS"),
            s3_credentials_secret=_secret_name(env, "KUBETUNE_S3_SECRET"),
            s3_endpoint_url=_endpoint(env, "KUBETUNE_S3_ENDPOINT_URL"),
        )
