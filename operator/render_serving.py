"""ModelDeployment -> the Kubernetes objects that serve it (pure: dicts in, dicts out).

One pod per replica runs two containers: the vLLM OpenAI server (port 8000, never exposed by
the Service unless a ServiceMonitor needs its metrics) and the kubetune gateway (port 8080,
OpenAI API with keys, payload logging, safety, canary routing). Model files come from a PVC
mounted read-only, the model cache, or an init container that fetches `s3://` URIs into an
emptyDir. Every child gets a deterministic name, the app.kubernetes.io labels and an owner
reference, so applying the same spec twice is a no-op and deleting the ModelDeployment
deletes everything.

Which model and adapters to serve is decided before rendering (status_serving.resolve_*):
this module never looks at FineTuneJobs or gates.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.api.common import API_VERSION
from kubetune.api.modeldeployment import ModelDeployment
from kubetune.api.uris import PVC_ROOT, local_path, parse_uri

from .settings import DEFAULT_GATEWAY_IMAGE, DEFAULT_TRAINER_IMAGE, DEFAULT_VLLM_IMAGE
from .vllm_args import VLLM_PORT, LoraModule, vllm_args

GATEWAY_PORT = 8080
MODEL_CACHE_MOUNT = "/models"
FETCH_ROOT = "/mnt/fetched"
GATEWAY_CONFIG_DIR = "/etc/kubetune/gateway"
GATEWAY_CONFIG_FILE = "canary.json"
KEYS_DIR = "/etc/kubetune/keys"
ENGINE_KEY_DIR = "/etc/kubetune/engine-key"
ENGINE_KEY = "key"
PAYLOAD_LOG_DIR = "/var/log/kubetune"
MODEL_LABEL = "kubetune.io/modeldeployment"
MODEL_DIGEST_ANNOTATION = "kubetune.io/model-digest"


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ServingSettings:
    """Operator-wide serving defaults (from the operator's environment)."""

    vllm_image: str = DEFAULT_VLLM_IMAGE
    kubetune_image: str = DEFAULT_TRAINER_IMAGE
    """Image with the `kubetune` command (init containers that fetch s3:// sources)."""
    gateway_image: str = DEFAULT_GATEWAY_IMAGE
    """Image of the gateway sidecar (`kubetune serve --upstream ...`)."""
    enable_keda: bool = False
    keda_prometheus_address: str = "http://prometheus-operated.monitoring.svc:9090"
    monitor_kind: Literal["PodMonitor", "ServiceMonitor"] = "PodMonitor"
    prometheus_monitor: bool = True
    """Render the PodMonitor/ServiceMonitor (needs the prometheus-operator CRDs)."""
    hpa_metric_name: str = "vllm:num_requests_waiting"
    model_cache_claim: str | None = None
    """PVC holding `org/name` models; unset: hub names go to vLLM as they are (offline cache)."""
    payload_log_claim: str | None = None
    """PVC for gateway payload logs (read by the monitor job); unset: an emptyDir."""
    s3_credentials_secret: str | None = None
    """Secret with AWS_* variables for the fetch init container."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO...) for the fetch init container (AWS_ENDPOINT_URL_S3)."""
    shm_size: str = "2Gi"
    startup_timeout_seconds: int = 1800
    resync_seconds: float = 30.0
    """How often pods are checked for adapters to (re)load and the Deployment for readiness."""
    admin_port: int | None = None
    """Port the operator uses for vLLM's admin API (default vllm_port; tests point it at a fake)."""
    gateway_metrics_port: int | None = None
    """Port the operator scrapes for each pod's gateway /metrics in a canary analysis (default
    gateway_port; tests point it at a local gateway)."""
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    """The operator's KUBETUNE_EXTRA_LABELS, put on every child and its pods."""
    vllm_port: int = VLLM_PORT
    gateway_port: int = GATEWAY_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        """Read `KUBETUNE_*` overrides; unset variables keep the defaults."""
        env = os.environ if env is None else env
        default = cls()

        def get(name: str, current: Any) -> Any:
            raw = env.get(name)
            if raw is None or raw == "":
                return current
            if isinstance(current, bool):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            if isinstance(current, int):
                try:
                    return int(raw)
                except ValueError:
                    raise ValueError(f"{name}={raw!r}: expected an integer") from None
            return raw

        monitor_kind = get("KUBETUNE_SERVING_MONITOR_KIND", default.monitor_kind)
        if monitor_kind not in ("PodMonitor", "ServiceMonitor"):
            raise ValueError(f"KUBETUNE_SERVING_MONITOR_KIND={monitor_kind!r}: use PodMonitor or ServiceMonitor")
        return cls(
            vllm_image=get("KUBETUNE_VLLM_IMAGE", default.vllm_image),
            kubetune_image=get("KUBETUNE_TRAINER_IMAGE", default.kubetune_image),
            gateway_image=get("KUBETUNE_GATEWAY_IMAGE", default.gateway_image),
            enable_keda=get("KUBETUNE_ENABLE_KEDA", default.enable_keda),
            keda_prometheus_address=get("KUBETUNE_KEDA_PROMETHEUS", default.keda_prometheus_address),
            monitor_kind=monitor_kind,
            prometheus_monitor=get("KUBETUNE_PROMETHEUS_MONITOR", default.prometheus_monitor),
            hpa_metric_name=get("KUBETUNE_HPA_METRIC", default.hpa_metric_name),
            model_cache_claim=get("KUBETUNE_MODEL_CACHE_PVC", default.model_cache_claim),
            payload_log_claim=get("KUBETUNE_PAYLOAD_LOG_CLAIM", default.payload_log_claim),
            s3_credentials_secret=get("KUBETUNE_S3_SECRET", default.s3_credentials_secret),
            s3_endpoint_url=get("KUBETUNE_S3_ENDPOINT_URL", default.s3_endpoint_url),
            shm_size=get("KUBETUNE_SERVING_SHM_SIZE", default.shm_size),
            startup_timeout_seconds=get("KUBETUNE_SERVING_STARTUP_SECONDS", default.startup_timeout_seconds),
            resync_seconds=_float(env, "KUBETUNE_SERVING_RESYNC_SECONDS", env.get("KUBETUNE_RESYNC_SECONDS") or "30"),
            admin_port=int(env["KUBETUNE_VLLM_ADMIN_PORT"]) if env.get("KUBETUNE_VLLM_ADMIN_PORT") else None,
            gateway_metrics_port=get("KUBETUNE_GATEWAY_METRICS_PORT", 0) or None,
        )


def _float(env: Mapping[str, str], name: str, default: str) -> float:
    raw = env.get(name) or default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: must be positive")
    return value


@dataclass(frozen=True)
class ResolvedModel:
    """What the engine loads at start-up, after gates and FineTuneJob lookups."""

    uri: str
    """Base (or merged/full) model: vLLM's --model."""
    served_name: str
    """--served-model-name of that model."""
    adapter: LoraModule | None = None
    """The FineTuneJob's adapter artifact, served from start-up (path is a URI here)."""
    digest: str | None = None
    """Artifact digest: a new digest at the same URI still rolls the pods."""
    trust_remote_code: bool = False


@dataclass(frozen=True)
class CanaryRoute:
    """The gateway's split for one adapter: weight percent of its traffic to `canary`."""

    model: str
    canary: str
    weight: int


@dataclass(frozen=True)
class RenderInput:
    md: ModelDeployment
    model: ResolvedModel
    adapter_uris: Sequence[str] = ()
    """URIs of runtime adapters: only their storage is mounted (loading is over HTTP)."""
    canary_routes: Sequence[CanaryRoute] = ()
    settings: ServingSettings = field(default_factory=ServingSettings)


# ----------------------------------------------------------------------------- names, labels


def child_name(md_name: str, suffix: str = "") -> str:
    """A DNS-1035 label (Services need one) from the ModelDeployment name, hashed when too long."""
    name = f"{md_name}-{suffix}" if suffix else md_name
    if len(name) <= 63 and re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "md-" + cleaned
    return f"{cleaned[: 63 - 9].rstrip('-')}-{digest}"


def names(md_name: str) -> dict[str, str]:
    """Every child's name, so handlers and status code look them up the same way."""
    base = child_name(md_name)
    return {
        "deployment": child_name(md_name, "vllm"),
        "service": base,
        "hpa": base,
        "scaledobject": base,
        "pdb": base,
        "monitor": base,
        "gateway_config": child_name(md_name, "gateway"),
        "engine_key": child_name(md_name, "engine-key"),
    }


def selector_labels(md_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetune-serving",
        "app.kubernetes.io/instance": _label_value(md_name),
        MODEL_LABEL: _label_value(md_name),
    }


def common_labels(md_name: str, component: str = "serving") -> dict[str, str]:
    return {
        **selector_labels(md_name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "kubetune",
        "app.kubernetes.io/managed-by": "kubetune-operator",
    }


def _label_value(value: str) -> str:
    if len(value) <= 63:
        return value
    return value[:54].rstrip("-._") + "-" + hashlib.sha256(value.encode()).hexdigest()[:8]


def endpoint(md_name: str, namespace: str) -> str:
    return f"http://{names(md_name)['service']}.{namespace}.svc:{GATEWAY_PORT}/v1"


def _meta(md: ModelDeployment, name: str, component: str = "serving") -> dict[str, Any]:
    meta = md.metadata
    owner = {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "name": name,
        "namespace": meta.get("namespace", "default"),
        "labels": common_labels(meta["name"], component),
        "ownerReferences": [owner],
    }


# ----------------------------------------------------------------------------- storage


@dataclass
class _Storage:
    """Volumes, mounts and fetches needed to make a set of URIs local paths in the pod."""

    settings: ServingSettings
    claims: set[str] = field(default_factory=set)
    fetches: dict[str, str] = field(default_factory=dict)
    model_cache: bool = False

    def pod_path(self, uri: str) -> str:
        parsed = parse_uri(uri)
        if parsed.scheme == "pvc":
            self.claims.add(parsed.claim or "")
            return local_path(uri, pvc_root=PVC_ROOT)
        if parsed.scheme == "s3":
            # Readable and unique: `a/b-c` and `a-b/c` must not share a folder.
            dest = f"{FETCH_ROOT}/{_safe_dir(parsed.location)[:50]}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"
            self.fetches[uri] = dest
            return dest
        if parsed.scheme == "hub":
            if self.settings.model_cache_claim:
                self.model_cache = True
                return f"{MODEL_CACHE_MOUNT}/{parsed.location}"
            return parsed.location
        return parsed.location

    def volumes(self) -> list[dict[str, Any]]:
        vols = [
            {"name": f"pvc-{_safe_dir(claim)}"[:63].rstrip("-"), "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            for claim in sorted(self.claims)
        ]
        if self.model_cache:
            vols.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": self.settings.model_cache_claim, "readOnly": True}})
        if self.fetches:
            vols.append({"name": "fetched", "emptyDir": {}})
        return vols

    def mounts(self) -> list[dict[str, Any]]:
        out = [
            {"name": f"pvc-{_safe_dir(claim)}"[:63].rstrip("-"), "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
            for claim in sorted(self.claims)
        ]
        if self.model_cache:
            out.append({"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT, "readOnly": True})
        if self.fetches:
            out.append({"name": "fetched", "mountPath": FETCH_ROOT, "readOnly": True})
        return out


def _safe_dir(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"


# ----------------------------------------------------------------------------- containers


def _container_security(**extra: Any) -> dict[str, Any]:
    """A fresh dict per container (shared nested dicts would alias in YAML and on mutation)."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True, **extra}


def gateway_args(md: ModelDeployment, settings: ServingSettings) -> list[str]:
    """The gateway sidecar's argv: `kubetune serve` in front of the local vLLM."""
    gw = md.spec.gateway
    args = [
        "serve",
        "--gateway-only",
        "--upstream", f"http://127.0.0.1:{settings.vllm_port}",
        "--host", "0.0.0.0",
        "--port", str(settings.gateway_port),
        "--log-dir", PAYLOAD_LOG_DIR,
        "--sample-rate", repr(float(gw.logging.sample_rate)),
        "--safety", gw.safety.scorer,
        "--safety-action", gw.safety.action,
        "--max-request-bytes", str(gw.max_request_bytes),
        "--max-tokens", str(gw.max_tokens),
        "--max-concurrency", str(gw.max_concurrency),
        "--max-queue", str(gw.max_queue),
        "--canary-config", f"{GATEWAY_CONFIG_DIR}/{GATEWAY_CONFIG_FILE}",
        "--upstream-api-key-file", f"{ENGINE_KEY_DIR}/{ENGINE_KEY}",
    ]  # fmt: skip
    if gw.safety.endpoint:
        args += ["--safety-endpoint", gw.safety.endpoint]
    if not gw.logging.redact_pii:
        args.append("--no-redact")
    if gw.auth_secret_ref is not None:
        args += ["--api-keys-file", f"{KEYS_DIR}/{gw.auth_secret_ref.key}"]
    if gw.rate_limits.requests_per_minute is not None:
        args += ["--rate-limit-rpm", repr(float(gw.rate_limits.requests_per_minute))]
    if gw.rate_limits.tokens_per_minute is not None:
        args += ["--rate-limit-tpm", repr(float(gw.rate_limits.tokens_per_minute))]
    if gw.workers > 1:
        args += ["--workers", str(gw.workers)]
    return args


def _gateway_resources(workers: int) -> dict[str, Any]:
    """One worker idles on a quarter core; several are there for throughput, so each gets a core.

    Memory: each worker process plus its safety-scorer child (scikit-learn) is about 240 MiB.
    """
    if workers == 1:
        return {"requests": {"cpu": "250m", "memory": "384Mi"}, "limits": {"memory": "1Gi"}}
    return {"requests": {"cpu": str(workers), "memory": f"{128 + 256 * workers}Mi"},
            "limits": {"memory": f"{512 + 512 * workers}Mi"}}


def _probe(path: str, port: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _resources(md: ModelDeployment) -> dict[str, Any]:
    res = md.spec.resources
    requests: dict[str, Any] = {"cpu": str(res.cpu), "memory": str(res.memory)}
    limits: dict[str, Any] = {"memory": str(res.memory)}
    if res.gpus:
        requests["nvidia.com/gpu"] = str(res.gpus)
        limits["nvidia.com/gpu"] = str(res.gpus)
    return {"requests": requests, "limits": limits}


def _vllm_container(inp: RenderInput, storage: _Storage) -> dict[str, Any]:
    md, model, settings = inp.md, inp.model, inp.settings
    lora = []
    if model.adapter is not None:
        lora.append(LoraModule(model.adapter.name, storage.pod_path(model.adapter.path)))
    args = vllm_args(
        model_path=storage.pod_path(model.uri),
        served_model_name=model.served_name,
        engine=md.spec.engine,
        lora_modules=lora,
        port=settings.vllm_port,
        trust_remote_code=model.trust_remote_code,
    )
    for uri in inp.adapter_uris:
        storage.pod_path(uri)  # mount their storage so runtime loads find the files
    startup_period = 10
    return {
        "name": "vllm",
        "image": md.spec.engine.image or settings.vllm_image,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": args,
        "env": [
            {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
            # vLLM's /v1 routes (inference and the runtime LoRA API) need this key, so only the
            # gateway and the operator reach them; /health and /metrics stay open for probes.
            {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {
                "name": names(md.metadata["name"])["engine_key"], "key": ENGINE_KEY}}},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
            {"name": "KUBETUNE_PVC_ROOT", "value": PVC_ROOT},
            {"name": "KUBETUNE_MODEL_CACHE", "value": MODEL_CACHE_MOUNT},
        ],
        "ports": [{"name": "vllm", "containerPort": settings.vllm_port, "protocol": "TCP"}],
        "startupProbe": _probe("/health", "vllm", startup_period, -(-settings.startup_timeout_seconds // startup_period)),
        "readinessProbe": _probe("/health", "vllm", 5, 3),
        "livenessProbe": _probe("/health", "vllm", 15, 4, timeout=10),
        "resources": _resources(md),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _gateway_container(md: ModelDeployment, settings: ServingSettings) -> dict[str, Any]:
    mounts = [
        {"name": "gateway-config", "mountPath": GATEWAY_CONFIG_DIR, "readOnly": True},
        {"name": "payload-logs", "mountPath": PAYLOAD_LOG_DIR},
        {"name": "gateway-tmp", "mountPath": "/tmp"},
        {"name": "engine-key", "mountPath": ENGINE_KEY_DIR, "readOnly": True},
    ]
    if settings.payload_log_claim:
        mounts[1]["subPath"] = f"{md.metadata.get('namespace', 'default')}/{md.metadata['name']}"
    if md.spec.gateway.auth_secret_ref is not None:
        mounts.append({"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True})
    return {
        "name": "gateway",
        "image": settings.gateway_image,
        "command": ["kubetune"],
        "args": gateway_args(md, settings),
        "env": [
            {"name": "KUBETUNE_DEPLOYMENT", "value": md.metadata["name"]},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [{"name": "http", "containerPort": settings.gateway_port, "protocol": "TCP"}],
        "readinessProbe": _probe("/healthz", "http", 5, 3),
        "livenessProbe": _probe("/healthz", "http", 15, 4),
        "resources": _gateway_resources(md.spec.gateway.workers),
        "securityContext": _container_security(readOnlyRootFilesystem=True),
        "volumeMounts": mounts,
    }


def _fetch_containers(storage: _Storage, settings: ServingSettings) -> list[dict[str, Any]]:
    """One init container per s3 URI, `kubetune fetch --to DIR URI` as argv."""
    out = []
    for index, (uri, dest) in enumerate(sorted(storage.fetches.items())):
        container: dict[str, Any] = {
            "name": f"fetch-{index}",
            "image": settings.kubetune_image,
            "command": ["kubetune"],
            "args": ["fetch", "--to", dest, uri],
            "securityContext": _container_security(readOnlyRootFilesystem=True),
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
            "volumeMounts": [{"name": "fetched", "mountPath": FETCH_ROOT}],
        }
        if settings.s3_credentials_secret:
            container["envFrom"] = [{"secretRef": {"name": settings.s3_credentials_secret}}]
        if settings.s3_endpoint_url:
            container["env"] = [{"name": "AWS_ENDPOINT_URL_S3", "value": settings.s3_endpoint_url}]
        out.append(container)
    return out


# ----------------------------------------------------------------------------- children


def render_deployment(inp: RenderInput) -> dict[str, Any]:
    md, settings = inp.md, inp.settings
    name = md.metadata["name"]
    storage = _Storage(settings)
    vllm = _vllm_container(inp, storage)
    vllm["volumeMounts"] += storage.mounts()
    gateway = _gateway_container(md, settings)
    res = md.spec.resources

    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "gateway-tmp", "emptyDir": {}},
        {"name": "gateway-config", "configMap": {"name": names(name)["gateway_config"]}},
        {"name": "engine-key", "secret": {
            "secretName": names(name)["engine_key"], "items": [{"key": ENGINE_KEY, "path": ENGINE_KEY}]}},
        (
            {"name": "payload-logs", "persistentVolumeClaim": {"claimName": settings.payload_log_claim}}
            if settings.payload_log_claim
            else {"name": "payload-logs", "emptyDir": {}}
        ),
        *storage.volumes(),
    ]
    auth = md.spec.gateway.auth_secret_ref
    if auth is not None:
        volumes.append(
            {"name": "api-keys", "secret": {"secretName": auth.name, "items": [{"key": auth.key, "path": auth.key}]}}
        )

    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [vllm, gateway],
        "volumes": volumes,
    }
    init = _fetch_containers(storage, settings)
    if init:
        pod_spec["initContainers"] = init
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(res.node_selector.items()))
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in res.tolerations]

    annotations = {}
    if inp.model.digest:
        annotations[MODEL_DIGEST_ANNOTATION] = inp.model.digest
    template_meta: dict[str, Any] = {"labels": common_labels(name)}
    if annotations:
        template_meta["annotations"] = annotations

    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(name)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "progressDeadlineSeconds": settings.startup_timeout_seconds + 600,
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if not md.spec.autoscaling.enabled:
        spec["replicas"] = md.spec.replicas  # with autoscaling the HPA owns the count
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(md, names(name)["deployment"]),
        "spec": spec,
    }


def render_service(inp: RenderInput) -> dict[str, Any]:
    md, settings = inp.md, inp.settings
    name = md.metadata["name"]
    ports = [{"name": "http", "port": GATEWAY_PORT, "targetPort": "http", "protocol": "TCP"}]
    if settings.monitor_kind == "ServiceMonitor":
        # Only then: it exposes vLLM's unauthenticated API inside the cluster.
        ports.append({"name": "vllm-metrics", "port": settings.vllm_port, "targetPort": "vllm", "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(md, names(name)["service"]),
        "spec": {"type": "ClusterIP", "selector": selector_labels(name), "ports": ports},
    }


def render_hpa(inp: RenderInput) -> dict[str, Any]:
    md = inp.md
    name = md.metadata["name"]
    auto = md.spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(md, names(name)["hpa"]),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": names(name)["deployment"]},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": inp.settings.hpa_metric_name},
                        "target": {"type": "AverageValue", "averageValue": _quantity(auto.target_waiting_requests)},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def render_scaled_object(inp: RenderInput) -> dict[str, Any]:
    md = inp.md
    name = md.metadata["name"]
    auto = md.spec.autoscaling
    namespace = md.metadata.get("namespace", "default")
    query = (
        f'sum(vllm:num_requests_waiting{{namespace="{namespace}",'
        f'app_kubernetes_io_instance="{_label_value(name)}"}})'
    )
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(md, names(name)["scaledobject"]),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": names(name)["deployment"]},
            "minReplicaCount": auto.min_replicas,
            "maxReplicaCount": auto.max_replicas,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": inp.settings.keda_prometheus_address,
                        "query": query,
                        "threshold": repr(float(auto.target_waiting_requests)),
                    },
                }
            ],
        },
    }


def render_pdb(inp: RenderInput) -> dict[str, Any]:
    md = inp.md
    name = md.metadata["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(md, names(name)["pdb"]),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
    }


def render_monitor(inp: RenderInput) -> dict[str, Any]:
    """PodMonitor (scrapes pods directly) or ServiceMonitor (through the Service's ports)."""
    md, settings = inp.md, inp.settings
    name = md.metadata["name"]
    target_labels = ["app.kubernetes.io/instance", MODEL_LABEL]
    if settings.monitor_kind == "ServiceMonitor":
        spec = {
            "selector": {"matchLabels": selector_labels(name)},
            "podTargetLabels": target_labels,
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": "30s"},
                {"port": "vllm-metrics", "path": "/metrics", "interval": "30s"},
            ],
        }
    else:
        spec = {
            "selector": {"matchLabels": selector_labels(name)},
            "podTargetLabels": target_labels,
            "podMetricsEndpoints": [
                {"port": "http", "path": "/metrics", "interval": "30s"},
                {"port": "vllm", "path": "/metrics", "interval": "30s"},
            ],
        }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": settings.monitor_kind,
        "metadata": _meta(md, names(name)["monitor"], "monitoring"),
        "spec": spec,
    }


def render_engine_key(md: ModelDeployment, token: str) -> dict[str, Any]:
    """The Secret with the engine's API key (the handler generates the token once)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(md, names(md.metadata["name"])["engine_key"], "serving"),
        "type": "Opaque",
        "data": {ENGINE_KEY: base64.b64encode(token.encode()).decode()},
    }


def gateway_config(routes: Sequence[CanaryRoute]) -> dict[str, Any]:
    """The gateway's routing file: per adapter, a weight percent of its requests to a canary."""
    return {
        "version": 1,
        "routes": [
            {"model": r.model, "canary": r.canary, "weight": r.weight}
            for r in sorted(routes, key=lambda r: r.model)
        ],
    }


def render_gateway_config(inp: RenderInput) -> dict[str, Any]:
    md = inp.md
    body = json.dumps(gateway_config(inp.canary_routes), indent=2, sort_keys=True) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(md, names(md.metadata["name"])["gateway_config"], "gateway"),
        "data": {GATEWAY_CONFIG_FILE: body},
    }


def render_all(inp: RenderInput) -> list[dict[str, Any]]:
    """Every child in apply order (config before the pods that mount it)."""
    md = inp.md
    children = [render_gateway_config(inp), render_deployment(inp), render_service(inp)]
    auto = md.spec.autoscaling
    if auto.enabled:
        children.append(render_scaled_object(inp) if inp.settings.enable_keda else render_hpa(inp))
    if md.spec.replicas > 1 or auto.enabled:
        children.append(render_pdb(inp))
    if inp.settings.prometheus_monitor:
        children.append(render_monitor(inp))
    return children


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{int(round(value * 1000))}m"


def pod_path(uri: str, settings: ServingSettings) -> str:
    """Where a URI's files are inside the serving pod (what vLLM is told to load)."""
    return _Storage(settings).pod_path(uri)
