"""ModelDeployment: serve a fine-tuned model with vLLM behind the gateway, and watch it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .common import (
    Timestamp,
    Condition,
    ImageRef,
    KubeModel,
    LocalObjectRef,
    Name,
    ObjectMetaTemplate,
    Quantity,
    SecretKeyRef,
    ShortStr,
    Text,
    Toleration,
    Uri,
    list_map,
)
from .finetunejob import FineTuneJobSpec
from .rules import Rule, register

KIND = "ModelDeployment"
PLURAL = "modeldeployments"

Phase = Literal["Pending", "WaitingForTraining", "Deploying", "Ready", "Degraded", "Failed"]


# ----------------------------------------------------------------------------- spec


class ModelSource(KubeModel):
    """The model to serve: exactly one of fineTuneJobRef or uri."""

    fine_tune_job_ref: LocalObjectRef | None = None
    """Serve this FineTuneJob's artifact once it Succeeded and passed its gates."""
    uri: Uri | None = None
    """Serve a model from a URI (`pvc://`, `s3://`, a path, or an `org/name` under the model cache)."""
    base_model: Uri | None = None
    """For an adapter artifact: the base model URI (default: the one recorded in the artifact manifest)."""


class AdapterSource(KubeModel):
    """A LoRA adapter loaded into the running engine without a restart."""

    name: Name
    """Served model name of the adapter (what clients put in `model`)."""
    fine_tune_job_ref: LocalObjectRef | None = None
    """Use this FineTuneJob's adapter artifact (after its gates pass)."""
    uri: Uri | None = None
    """Use the adapter at this URI."""


class Engine(KubeModel):
    """vLLM settings. Extra arguments are passed as a list, never through a shell."""

    image: ImageRef | None = None
    """vLLM OpenAI server image, by tag or pinned by digest (`repo@sha256:...`); defaults to the
    operator's configured image."""
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    """--max-model-len; default: the model's own."""
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    """--tensor-parallel-size; also the GPUs per replica."""
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    """--gpu-memory-utilization."""
    max_loras: Annotated[int, Field(ge=1, le=256)] = 4
    """--max-loras: adapters in one batch."""
    max_lora_rank: Annotated[int, Field(ge=1, le=1024)] = 16
    """--max-lora-rank: the largest adapter rank the engine accepts."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """--dtype."""
    extra_args: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)] | None = None
    """Additional vLLM arguments, one list item per argv element."""


class Autoscaling(KubeModel):
    """Horizontal autoscaling on vLLM's queue length."""

    enabled: bool = False
    """Create a HorizontalPodAutoscaler (or a KEDA ScaledObject when the operator enables KEDA)."""
    min_replicas: Annotated[int, Field(ge=1)] = 1
    """Lowest replica count."""
    max_replicas: Annotated[int, Field(ge=1)] = 4
    """Highest replica count."""
    target_waiting_requests: Annotated[float, Field(gt=0)] = 4
    """Target of `vllm:num_requests_waiting` per replica."""


class ServingResources(KubeModel):
    """Per-replica resources and placement."""

    gpus: Annotated[int, Field(ge=0, le=64)] = 1
    """GPUs per replica (at least engine.tensorParallelSize)."""
    cpu: Quantity = "4"
    """CPU request per replica."""
    memory: Quantity = "16Gi"
    """Memory request per replica."""
    node_selector: Annotated[dict[str, ShortStr], Field(max_length=64)] | None = None
    """Node labels the replicas must match."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Tolerations for tainted GPU nodes."""


class CanaryAnalysis(KubeModel):
    """Automatic canary analysis: canary and stable compared on live traffic, window by window.

    Each window compares the gateway's own metrics of the two versions: error rate (5xx),
    TTFT p95, inter-token latency p95, safety flag ratio and mean feedback rating. A check
    fails only when the canary is worse by more than its margin and the difference is
    significant; the level is alpha split over every check of every window (Bonferroni), so a
    canary as good as stable is rolled back with probability at most alpha. The canary is
    promoted after `windows` passing windows in a row and rolled back at the first failing one.
    """

    interval_seconds: Annotated[int, Field(ge=1, le=86400)] = 60
    """Length of one window; a window stays open until both versions have minRequests requests."""
    windows: Annotated[int, Field(ge=1, le=100)] = 3
    """Passing windows in a row that promote the canary."""
    min_requests: Annotated[int, Field(ge=1, le=1000000)] = 100
    """Requests each version needs in a window before it is judged; the latency and safety checks
    need half as many observations (answers that succeeded, streamed or were scored) or are skipped."""
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Chance of rolling back a canary as good as stable, over the whole analysis."""
    max_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = 0.02
    """Canary 5xx rate may exceed stable's by this much (absolute)."""
    max_latency_ratio: Annotated[float, Field(ge=1, le=100)] = 1.5
    """Canary TTFT and inter-token latency p95 may be this many times stable's."""
    max_safety_flag_increase: Annotated[float, Field(ge=0, le=1)] = 0.02
    """Canary safety flag ratio may exceed stable's by this much (absolute)."""
    max_feedback_drop: Annotated[float, Field(ge=0, le=2)] = 0.2
    """Canary mean rating (-1 to 1) may be this much below stable's."""
    min_feedback: Annotated[int, Field(ge=1, le=1000000)] = 10
    """Ratings each version needs in a window for the feedback check; fewer skip it."""


class Rollout(KubeModel):
    """How a new adapter version reaches traffic."""

    strategy: Literal["Replace", "Canary"] = "Replace"
    """Replace switches at once; Canary sends canaryWeight percent to the new version first."""
    canary_weight: Annotated[int, Field(ge=0, le=100)] = 10
    """Percent of the adapter's traffic sent to the new version during a canary."""
    analysis: CanaryAnalysis | None = None
    """Promote or roll back a canary automatically; unset: by the kubetune.io/canary annotation only."""


class GatewayLogging(KubeModel):
    """Payload logging for monitoring."""

    sample_rate: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Share of requests logged (requests with negative feedback are always kept)."""
    redact_pii: bool = True
    """Redact PII before anything is written."""


class GatewaySafety(KubeModel):
    """Safety scoring of responses."""

    scorer: Literal["offline", "llamaGuard", "none"] = "offline"
    """offline (bundled classifier and PII patterns), llamaGuard (an endpoint) or none."""
    endpoint: Uri | None = None
    """Endpoint for the llamaGuard scorer."""
    action: Literal["log", "flag", "block"] = "flag"
    """log the score, flag the response in logs and metrics, or block it."""


class RateLimits(KubeModel):
    """Default per-key budgets; a line `KEY rpm=N tpm=N` in the keys Secret sets a key's own."""

    requests_per_minute: Annotated[float, Field(gt=0)] | None = None
    """Requests per minute per API key (unset: no limit)."""
    tokens_per_minute: Annotated[float, Field(gt=0)] | None = None
    """Prompt plus completion tokens per minute per API key (unset: no limit)."""


class Gateway(KubeModel):
    """The OpenAI-compatible gateway in front of vLLM."""

    auth_secret_ref: SecretKeyRef | None = None
    """Secret whose key holds API keys, one per line; unset disables auth."""
    logging: GatewayLogging = GatewayLogging()
    """Payload logging."""
    safety: GatewaySafety = GatewaySafety()
    """Safety scoring."""
    max_request_bytes: Annotated[int, Field(ge=1024)] = 1048576
    """Larger request bodies get 413."""
    max_tokens: Annotated[int, Field(ge=1)] = 4096
    """Largest max_tokens a request may ask for."""
    rate_limits: RateLimits = RateLimits()
    """Per-key request and token budgets, shared by the gateway workers of a pod; over them: 429 with Retry-After."""
    max_concurrency: Annotated[int, Field(ge=1, le=100000)] = 256
    """Requests each gateway worker sends to vLLM at once."""
    max_queue: Annotated[int, Field(ge=0, le=1000000)] = 1024
    """Requests each gateway worker lets wait for a slot; more get 503 with Retry-After."""
    workers: Annotated[int, Field(ge=1, le=16)] = 1
    """Gateway processes sharing the port (each gets a CPU): one streams roughly 700-1000 requests/s per core, see docs/serving.md."""


class MonitoringThresholds(KubeModel):
    """When monitoring raises conditions."""

    drift_share: Annotated[float, Field(ge=0, le=1)] | None = None
    """Unset: one significant signal makes the window Drifted. Set: also this share of the signals must be
    significant, or all content signals of one column (a topic shift)."""
    safety_flag_ratio: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Share of flagged responses that counts as a safety problem."""


class Monitoring(KubeModel):
    """Drift and safety monitoring of served traffic."""

    enabled: bool = True
    """Run the monitor CronJob."""
    schedule: Annotated[str, Field(max_length=128)] = "*/30 * * * *"
    """Cron schedule of the monitor job."""
    window_seconds: Annotated[int, Field(ge=60)] = 86400
    """How far back traffic is compared with the training reference."""
    min_samples: Annotated[int, Field(ge=1)] = 200
    """Fewer logged requests than this (or than 10, the fewest a test runs on) make the check InsufficientData,
    never Drifted."""
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    """Chance that a window of unchanged traffic is called Drifted: each signal's p-value is held to a
    Holm-corrected share of it, so the false-alarm rate is the same at 20 rows and at 5,000."""
    thresholds: MonitoringThresholds = MonitoringThresholds()
    """Drift and safety thresholds."""


class FineTuneJobTemplate(KubeModel):
    """The FineTuneJob created on retraining; its datasets get the new traffic window added."""

    metadata: ObjectMetaTemplate | None = None
    """Labels and annotations for created jobs."""
    spec: FineTuneJobSpec
    """Spec of created jobs."""


class Retraining(KubeModel):
    """What happens when monitoring finds a problem."""

    mode: Literal["Never", "Suggest", "Auto"] = "Never"
    """Never, Suggest (a condition and an Event) or Auto (create a FineTuneJob)."""
    cooldown_seconds: Annotated[int, Field(ge=0)] = 86400
    """Minimum time since the last deploy before retraining."""
    min_samples: Annotated[int, Field(ge=1)] = 500
    """Minimum logged samples in the window."""
    persistent_checks: Annotated[int, Field(ge=1, le=100)] = 3
    """Consecutive drifted checks needed."""
    max_per_week: Annotated[int, Field(ge=0, le=100)] = 1
    """Cap on retraining jobs per 7 days."""
    template: FineTuneJobTemplate | None = None
    """FineTuneJob template (required by mode Auto)."""


class ModelDeploymentSpec(KubeModel):
    """Desired state of a served model."""

    model: ModelSource
    """The model to serve."""
    adapters: Annotated[list[AdapterSource], Field(max_length=64), Field(json_schema_extra=list_map("name"))] | None = None
    """LoRA adapters served next to the base model."""
    engine: Engine = Engine()
    """vLLM settings."""
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Replica count when autoscaling is off."""
    autoscaling: Autoscaling = Autoscaling()
    """Autoscaling."""
    resources: ServingResources = ServingResources()
    """Per-replica resources."""
    rollout: Rollout = Rollout()
    """Adapter rollout."""
    gateway: Gateway = Gateway()
    """Gateway settings."""
    monitoring: Monitoring = Monitoring()
    """Drift and safety monitoring."""
    retraining: Retraining = Retraining()
    """Retraining policy."""


# ----------------------------------------------------------------------------- status


class PodAdapterState(KubeModel):
    """An adapter's state in one pod."""

    pod: ShortStr
    """Pod name."""
    state: Literal["Loading", "Loaded", "Failed"]
    """Loading, Loaded (seen in /v1/models) or Failed."""
    message: Text = ""
    """Error details."""


class AdapterStatus(KubeModel):
    """An adapter as served."""

    name: Name
    """Served name."""
    uri: Uri | None = None
    """Resolved artifact URI."""
    digest: ShortStr | None = None
    """Artifact digest."""
    pods: Annotated[list[PodAdapterState], Field(max_length=1000)] | None = None
    """Per-pod load state."""


class CanaryCheck(KubeModel):
    """One comparison of canary and stable in a window."""

    name: Literal["errorRate", "ttftP95", "itlP95", "safetyFlagRatio", "feedback"]
    """What was compared."""
    result: Literal["Pass", "Fail", "Skipped"]
    """Fail: worse beyond the margin and significant; Skipped: too few observations."""
    canary: float | None = None
    """The canary's figure (a ratio, seconds, or a mean rating)."""
    stable: float | None = None
    """Stable's figure."""
    p_value: float | None = None
    """One-sided p-value of "the canary is worse"."""
    level: float | None = None
    """The level the p-value is held to."""
    message: Text | None = None
    """The comparison in words."""


class CanaryWindow(KubeModel):
    """The last judged window."""

    verdict: Literal["Pass", "Fail"]
    """Pass: every check passed or was skipped."""
    end_time: Timestamp
    """When the window was judged."""
    canary_requests: int
    """Canary requests in the window."""
    stable_requests: int
    """Stable requests in the window."""
    checks: Annotated[list[CanaryCheck], Field(max_length=8)]
    """Each comparison."""


class CanaryAnalysisStatus(KubeModel):
    """Automatic analysis of the running canary."""

    windows_passed: int = 0
    """Passing windows in a row."""
    windows_needed: int
    """Passing windows that promote it."""
    window_start_time: Timestamp | None = None
    """When the open window started."""
    last_window: CanaryWindow | None = None
    """The last judged window."""
    message: Text | None = None
    """What the analysis waits for (traffic, metrics)."""


class CanaryStatus(KubeModel):
    """A canary in progress."""

    adapter: Name
    """Adapter under canary."""
    weight: Annotated[int, Field(ge=0, le=100)]
    """Percent of its traffic on the new version."""
    uri: Uri
    """New version."""
    previous_uri: Uri | None = None
    """Version kept for rollback."""
    analysis: CanaryAnalysisStatus | None = None
    """Progress of the automatic analysis (spec.rollout.analysis)."""


class FeedbackFigures(KubeModel):
    """Client ratings (`/v1/feedback`) of the answers in the monitor window."""

    rated: int | None = None
    """Answers rated."""
    positive: int | None = None
    """Rated +1."""
    negative: int | None = None
    """Rated -1 (kept out of the retraining window)."""
    mean_rating: float | None = None
    """Mean rating, -1 to 1."""
    preference_pairs: int | None = None
    """Preference pairs the ratings gave (one prompt, an answer rated +1 and one rated -1 or
    flagged): the data a dpo or orpo retraining template trains on."""


class MonitoringStatus(KubeModel):
    """Latest drift and safety figures."""

    drift_detected: bool | None = None
    """Whether the last check found drift."""
    drift_share: float | None = None
    """Share of drifted signals in the last check."""
    drift_scores: dict[str, float] | None = None
    """Per-signal effect: K-S distance, or a domain classifier's held-out ROC AUC."""
    drift_p_values: dict[str, float] | None = None
    """Per-signal p-value of the last check."""
    drift_thresholds: dict[str, float] | None = None
    """Per-signal level its p-value was held to (Holm-corrected alpha)."""
    verdict: Literal["Drift", "NoDrift", "InsufficientData"] | None = None
    """The last check's verdict."""
    safety_flag_ratio: float | None = None
    """Share of flagged responses in the window."""
    pii_leak_ratio: float | None = None
    """Share of responses containing PII."""
    refusal_ratio: float | None = None
    """Share of responses that refuse."""
    samples: int | None = None
    """Logged samples in the window."""
    consecutive_drift_checks: int | None = None
    """Drifted checks in a row."""
    last_check_time: Timestamp | None = None
    """When the monitor last ran."""
    report_uri: Uri | None = None
    """HTML drift report."""
    feedback: FeedbackFigures | None = None
    """Client ratings in the window."""


class ModelDeploymentStatus(KubeModel):
    """Observed state of a served model."""

    phase: Phase | None = None
    """For humans: Pending, WaitingForTraining, Deploying, Ready, Degraded or Failed."""
    conditions: Annotated[list[Condition], Field(max_length=16), Field(json_schema_extra=list_map("type"))] | None = None
    """Ready, Progressing, Degraded, Drifted, RetrainingSuggested."""
    observed_generation: int | None = None
    """The generation the status reflects."""
    ready_replicas: int | None = None
    """Replicas ready to serve."""
    endpoint: Uri | None = None
    """In-cluster URL of the OpenAI-compatible gateway."""
    served_models: Annotated[list[ShortStr], Field(max_length=1000)] | None = None
    """Names clients may use as `model`."""
    model_uri: Uri | None = None
    """Resolved base model or artifact URI being served."""
    adapters: Annotated[list[AdapterStatus], Field(max_length=64)] | None = None
    """Adapters with per-pod state."""
    canary: CanaryStatus | None = None
    """Canary in progress."""
    monitoring: MonitoringStatus | None = None
    """Latest monitoring figures."""
    last_deploy_time: Timestamp | None = None
    """When the current model version went live (retraining cooldown starts here)."""
    last_retrain_job: ShortStr | None = None
    """Name of the last FineTuneJob created by retraining."""
    retrain_jobs: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=100)] | None = None
    """Creation times (RFC 3339) of recent retraining jobs, for the weekly cap."""


class ModelDeployment(KubeModel):
    """A served fine-tuned model: vLLM, an OpenAI-compatible gateway, drift monitoring, retraining."""

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    """kubetune.io/v1alpha1"""
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    """ModelDeployment"""
    metadata: dict[str, Any] = {}
    """Standard object metadata."""
    spec: ModelDeploymentSpec
    """Desired state."""
    status: ModelDeploymentStatus | None = None
    """Observed state, written by the operator and the monitor job."""


# ----------------------------------------------------------------------------- rules

register(
    ModelSource,
    Rule(
        "has(self.fineTuneJobRef) != has(self.uri)",
        "set exactly one of model.fineTuneJobRef and model.uri",
        "",
        lambda m: (m.fine_tune_job_ref is None) != (m.uri is None),
    ),
)
register(
    AdapterSource,
    Rule(
        "has(self.fineTuneJobRef) != has(self.uri)",
        "set exactly one of fineTuneJobRef and uri",
        "",
        lambda a: (a.fine_tune_job_ref is None) != (a.uri is None),
    ),
)
register(
    Rollout,
    Rule(
        "!has(self.analysis) || self.strategy == 'Canary'",
        "rollout.analysis needs rollout.strategy Canary",
        ".analysis",
        lambda r: r.analysis is None or r.strategy == "Canary",
    ),
)
register(
    Autoscaling,
    Rule(
        "self.minReplicas <= self.maxReplicas",
        "autoscaling.minReplicas must not exceed maxReplicas",
        ".minReplicas",
        lambda a: a.min_replicas <= a.max_replicas,
    ),
)
register(
    Retraining,
    Rule(
        "self.mode != 'Auto' || has(self.template)",
        "retraining mode Auto needs a template",
        ".template",
        lambda r: r.mode != "Auto" or r.template is not None,
    ),
)
register(
    GatewaySafety,
    Rule(
        "self.scorer != 'llamaGuard' || has(self.endpoint)",
        "scorer llamaGuard needs an endpoint",
        ".endpoint",
        lambda p: p.scorer != "llamaGuard" or p.endpoint is not None,
    ),
)
register(
    ModelDeploymentSpec,
    Rule(
        "self.resources.gpus == 0 || self.resources.gpus >= self.engine.tensorParallelSize",
        "resources.gpus must be at least engine.tensorParallelSize",
        ".resources.gpus",
        lambda s: s.resources.gpus == 0 or s.resources.gpus >= s.engine.tensor_parallel_size,
    ),
)
