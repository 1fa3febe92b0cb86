"""FineTuneJob: one fine-tuning run, from datasets and a base model to an evaluated artifact."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .common import (
    Timestamp,
    FREE_FORM,
    Condition,
    ImageRef,
    KubeModel,
    LocalObjectRef,
    Name,
    Quantity,
    SecretKeyRef,
    ShortStr,
    Text,
    Toleration,
    PromptText,
    Uri,
    list_map,
)
from .rules import Rule, register

KIND = "FineTuneJob"
PLURAL = "finetunejobs"

MethodType = Literal["full", "freeze", "lora", "qlora", "dora", "hft"]
ADAPTER_METHODS = ("lora", "qlora", "dora")
MAX_LORA_RANK_ANNOTATION = "kubetune.io/max-lora-rank"
"""On the manifest the trainer reads: the largest adapter rank the serving engine accepts. The
operator sets it from the ModelDeployment a job promotes into (spec.deployTo ->
spec.engine.maxLoraRank); on `kubetune train --local`, set it yourself for your vLLM's
--max-lora-rank. The trainer refuses a larger rank before training starts."""
DatasetFormat = Literal["alpaca", "chat", "preference", "text"]
ObjectiveType = Literal["sft", "dpo", "orpo"]
PREFERENCE_OBJECTIVES = ("dpo", "orpo")
GateMetric = Literal[
    "evalLoss", "perplexity", "evalLossDelta", "exactMatch", "rougeL", "safetyFlagRatio"
]
Phase = Literal[
    "Pending", "Queued", "Provisioning", "Training", "Evaluating", "Succeeded", "Failed", "Suspended"
]


# ----------------------------------------------------------------------------- spec


class Quantization(KubeModel):
    """Load the base model quantized with bitsandbytes (QLoRA). Needs a CUDA GPU."""

    bits: Literal[4, 8]
    """4 for QLoRA (NF4/FP4), 8 for LLM.int8 loading."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; NF4 is what the QLoRA paper uses."""
    double_quant: bool = True
    """Also quantize the quantization constants (saves about 0.4 bits per parameter)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """dtype of the matrix multiplications on dequantized weights."""


class BaseModelSource(KubeModel):
    """Where the base model comes from. Weights are never downloaded from a hub at run time."""

    uri: Uri
    """A Hugging Face-style name resolved under the model cache mount (`org/name`), `pvc://claim/path`, `s3://bucket/prefix`, `file:///abs/path` or a local path."""
    revision: ShortStr | None = None
    """A revision (commit or tag) of a hub-style name, recorded in the artifact manifest."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless you trust the model's authors."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; auto picks bfloat16 on GPUs that support it and float32 on CPU."""
    quantization: Quantization | None = None
    """Quantized loading (required by method qlora)."""


class ColumnMapping(KubeModel):
    """Which source columns hold which role. Unset roles use the format's default names."""

    prompt: ShortStr | None = None
    """Instruction or prompt column (alpaca: `instruction`; preference: `prompt`)."""
    input: ShortStr | None = None
    """Optional extra input appended to the prompt (alpaca: `input`)."""
    response: ShortStr | None = None
    """Target answer column (alpaca: `output`)."""
    system: ShortStr | None = None
    """System prompt column."""
    messages: ShortStr | None = None
    """Chat messages column (chat: `messages`; ShareGPT `conversations` is also understood)."""
    chosen: ShortStr | None = None
    """Preferred answer column (preference: `chosen`)."""
    rejected: ShortStr | None = None
    """Dispreferred answer column (preference: `rejected`)."""
    text: ShortStr | None = None
    """Raw text column (text: `text`)."""
    label: ShortStr | None = None
    """Class label column used for stratified splits and imbalance handling."""


class DatasetSource(KubeModel):
    """One named dataset; several are mixed by weight."""

    name: Name
    """Unique name of this source within the job."""
    uri: Uri
    """JSON lines / JSON / CSV / Parquet file or a saved `datasets` directory: local path, `file://`, `pvc://claim/path` or `s3://`."""
    format: DatasetFormat
    """alpaca (instruction/input/output), chat (OpenAI or ShareGPT messages), preference (prompt/chosen/rejected) or text."""
    columns: ColumnMapping | None = None
    """Column names, when they differ from the format's defaults."""
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    """Relative share of this source in the training mix (sampled with replacement when above its natural share)."""
    max_samples: Annotated[int, Field(ge=1)] | None = None
    """Use at most this many rows of the source."""


class Imbalance(KubeModel):
    """Class-imbalance handling by a label field."""

    label_field: ShortStr | None = None
    """Column holding the class label (overrides columns.label)."""
    strategy: Literal["none", "oversample", "undersample", "classWeights"] = "none"
    """oversample minority classes, undersample majority classes, or weight the loss by inverse class frequency."""


class Preprocessing(KubeModel):
    """Dataset preparation: cleaning, dedup, PII redaction, balancing, split, tokenisation."""

    dedup: Literal["none", "exact", "near"] = "exact"
    """Drop duplicate samples: exact (normalised text) or near (MinHash over word shingles)."""
    pii_redaction: bool = True
    """Replace emails, phone numbers, card numbers, IPs and secret keys with placeholders."""
    imbalance: Imbalance | None = None
    """Class balancing by a label field."""
    validation_split: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    """Share of rows held out for validation (stratified by label when there is one)."""
    max_seq_length: Annotated[int, Field(ge=16, le=1048576)] = 1024
    """Longest tokenised sample; longer rows are dropped and counted in the dataset report."""
    packing: bool = True
    """Pack several samples per sequence without cross-attention between them."""
    train_on_prompt: bool = False
    """Also compute the loss on prompt tokens (default: assistant tokens only)."""
    max_bad_rows_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Malformed rows are skipped and counted; above this share of a source the job fails."""
    chat_template: Text | None = None
    """A Jinja chat template to use when the tokenizer has none."""


class LoraConfig(KubeModel):
    """LoRA-family knobs (lora, qlora, dora)."""

    rank: Annotated[int, Field(ge=1, le=1024)] = 16
    """Rank r of the update matrices."""
    alpha: Annotated[float, Field(gt=0)] = 32
    """Scaling numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rsLora)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Dropout on the LoRA input."""
    target_modules: Annotated[list[ShortStr], Field(min_length=1, max_length=64)] = ["all-linear"]
    """Module names to adapt; `all-linear` means every linear layer except the output head."""
    rs_lora: bool = False
    """Rank-stabilised LoRA scaling (alpha/sqrt(r))."""


class FreezeConfig(KubeModel):
    """Freeze tuning: train only some transformer blocks."""

    trainable_layers: Annotated[int, Field(ge=1)] = 2
    """How many transformer blocks stay trainable."""
    position: Literal["last", "first"] = "last"
    """Whether the trainable blocks are the last or the first ones."""
    train_embeddings: bool = False
    """Also train the input embeddings and output head."""


class HftConfig(KubeModel):
    """Half Fine-Tuning (arXiv 2404.18466): each stage freezes a random half of every block."""

    seed: int = 0
    """Seed of the per-stage selection, logged so a run can be reproduced."""
    stages: Annotated[int, Field(ge=1, le=1000)] = 4
    """Number of stages the training steps are split into; a new half is drawn per stage."""


class Method(KubeModel):
    """Which parameters are trained."""

    type: MethodType = "lora"
    """full, freeze, lora, qlora (4-bit base), dora (weight-decomposed LoRA) or hft (Half Fine-Tuning)."""
    lora: LoraConfig | None = None
    """Settings for lora, qlora and dora."""
    freeze: FreezeConfig | None = None
    """Settings for freeze."""
    hft: HftConfig | None = None
    """Settings for hft."""


class Objective(KubeModel):
    """What the model is trained to do."""

    type: ObjectiveType = "sft"
    """sft (supervised), dpo (direct preference optimisation) or orpo (odds-ratio preference)."""
    beta: Annotated[float, Field(gt=0, le=100)] = 0.1
    """DPO temperature, or ORPO's weight of the odds-ratio term."""


class Hyperparameters(KubeModel):
    """Optimisation settings."""

    epochs: Annotated[float, Field(gt=0, le=1000)] = 1
    """Passes over the training set (fractions allowed); maxSteps wins when set."""
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Stop after this many optimizer steps."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    """Peak learning rate."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 4
    """Sequences per worker per micro-batch."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=4096)] = 1
    """Micro-batches per optimizer step."""
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    """Share of steps with a linear warmup."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    """AdamW weight decay."""
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    seed: Annotated[int, Field(ge=0)] = 42
    """Seed for data order, initialisation and dropout."""


class Resources(KubeModel):
    """The training cluster: workers, accelerators and placement."""

    workers: Annotated[int, Field(ge=1, le=1024)] = 1
    """Ray Train workers (one per pod)."""
    gpus_per_worker: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs per worker; 0 trains on CPU."""
    cpu: Quantity = "4"
    """CPU request and limit per worker."""
    memory: Quantity = "16Gi"
    """Memory request and limit per worker."""
    shared_memory: Quantity = "2Gi"
    """Size of the /dev/shm emptyDir (NCCL and data loaders need more than the default 64Mi)."""
    image: ImageRef | None = None
    """Trainer image, by tag or pinned by digest (`repo@sha256:...`); defaults to the operator's
    configured trainer image (ghcr.io/kubetune/trainer:<version>, or -cpu for the CPU build)."""
    image_pull_secrets: Annotated[list[LocalObjectRef], Field(max_length=16)] | None = None
    """Secrets for pulling the image."""
    node_selector: Annotated[dict[str, ShortStr], Field(max_length=64)] | None = None
    """Node labels the workers must match (placement; changeable while suspended)."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Tolerations for tainted GPU nodes (placement; changeable while suspended)."""
    affinity: Annotated[dict[str, Any], Field(json_schema_extra=FREE_FORM)] | None = None
    """A Pod affinity block (placement; changeable while suspended)."""
    priority_class_name: ShortStr | None = None
    """PriorityClass of the pods (placement; changeable while suspended)."""


class Checkpointing(KubeModel):
    """Checkpoints for resume after preemption, suspend or failure."""

    uri: Uri | None = None
    """Checkpoint storage; defaults to `<output.uri>/checkpoints`."""
    every_steps: Annotated[int, Field(ge=1)] = 100
    """Save every N optimizer steps (and at the end)."""
    keep_last: Annotated[int, Field(ge=1, le=100)] = 2
    """How many checkpoints to keep."""


class EvalPrompt(KubeModel):
    """A held-out prompt with its reference answer."""

    prompt: PromptText
    """The user message."""
    reference: PromptText | None = None
    """Expected answer for exact-match and ROUGE-L."""


class SafetyProbe(KubeModel):
    """Red-team prompts whose responses are scored for unsafe content."""

    enabled: bool = True
    """Run the probe after training."""
    prompt_set: ShortStr = "builtin"
    """`builtin` (a small shipped red-team set) or a URI of a JSON lines file with `prompt` fields."""
    scorer: Literal["offline", "llamaGuard"] = "offline"
    """offline: a bundled classifier plus PII patterns; llamaGuard: an OpenAI-compatible Llama Guard endpoint."""
    endpoint: Uri | None = None
    """Endpoint of the llamaGuard scorer."""


class Gate(KubeModel):
    """A threshold a metric must meet before the model may be deployed."""

    metric: GateMetric
    """evalLoss, perplexity, evalLossDelta (tuned minus base), exactMatch, rougeL or safetyFlagRatio."""
    operator: Literal["<", "<=", ">", ">="]
    """How the value compares to the threshold for the gate to pass."""
    threshold: float
    """The threshold."""


class Evaluation(KubeModel):
    """What is measured after training and what must hold to deploy."""

    metrics: Annotated[
        list[Literal["loss", "perplexity", "exactMatch", "rougeL"]], Field(max_length=8)
    ] = ["loss", "perplexity"]
    """Metrics computed for the base and the tuned model."""
    prompts: Annotated[list[EvalPrompt], Field(max_length=200)] | None = None
    """Held-out prompts for generation metrics (inline; use promptsUri for larger sets)."""
    prompts_uri: Uri | None = None
    """JSON lines file of `prompt`/`reference` rows, in addition to `prompts`."""
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 128
    """Generation length for evaluation prompts."""
    safety: SafetyProbe | None = None
    """Safety probe settings."""
    gates: Annotated[list[Gate], Field(max_length=32)] | None = None
    """All gates must pass for a ModelDeployment to serve the artifact."""


class Output(KubeModel):
    """Where the artifact goes."""

    uri: Uri
    """Artifact location: a local path, `file://`, `pvc://claim/path` or `s3://bucket/prefix`."""
    merge_adapter: bool = False
    """Also write merged full weights (safetensors) next to the adapter."""


class FineTuneJobSpec(KubeModel):
    """Desired state of a fine-tuning run."""

    base_model: BaseModelSource
    """The model to start from."""
    datasets: Annotated[list[DatasetSource], Field(min_length=1, max_length=32), Field(json_schema_extra=list_map("name"))]
    """Training data sources, mixed by weight."""
    preprocessing: Preprocessing = Preprocessing()
    """Dataset preparation."""
    method: Method = Method()
    """Which parameters are trained."""
    objective: Objective = Objective()
    """Training objective."""
    hyperparameters: Hyperparameters = Hyperparameters()
    """Optimisation settings."""
    resources: Resources = Resources()
    """Workers, accelerators and placement."""
    engine: Literal["RayJob", "Job"] = "RayJob"
    """RayJob (KubeRay, any number of workers) or Job (a plain batch Job with an in-pod Ray, single worker, no KubeRay needed)."""
    checkpointing: Checkpointing = Checkpointing()
    """Checkpoint storage and frequency."""
    evaluation: Evaluation = Evaluation()
    """Evaluation and deployment gates."""
    output: Output
    """Artifact location."""
    deploy_to: LocalObjectRef | None = None
    """A ModelDeployment to promote the artifact to when all gates pass."""
    suspend: bool = False
    """Suspend the run: the Ray cluster is deleted, checkpoints are kept; unsuspend resumes."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """Fail the run after this many seconds of running."""
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 2
    """Retries (each resumes from the last checkpoint) before the run is Failed."""
    hf_token_secret_ref: SecretKeyRef | None = None
    """Secret holding a Hugging Face token for gated models on a mirror; passed by reference only."""


# ----------------------------------------------------------------------------- status


class Progress(KubeModel):
    """Live training progress reported by the trainer."""

    step: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps done."""
    total_steps: Annotated[int, Field(ge=0)] | None = None
    """Optimizer steps planned."""
    epoch: float | None = None
    """Fractional epoch."""
    loss: float | None = None
    """Training loss (smoothed over the reporting interval)."""
    learning_rate: float | None = None
    """Current learning rate."""
    tokens_per_second: float | None = None
    """Non-padding tokens per second over all workers."""
    eta_seconds: Annotated[int, Field(ge=0)] | None = None
    """Estimated seconds to the end of training."""
    updated_time: Timestamp | None = None
    """When this progress was reported."""


class Artifact(KubeModel):
    """The exported model."""

    uri: Uri
    """Where the artifact lives."""
    digest: ShortStr | None = None
    """sha256 over the artifact's files, as recorded in manifest.json."""
    kind: Literal["adapter", "merged", "full"]
    """adapter (PEFT LoRA/DoRA), merged (adapter merged into the base) or full weights."""


class GateResult(KubeModel):
    """The outcome of one gate."""

    metric: GateMetric
    """Gate metric."""
    operator: Literal["<", "<=", ">", ">="]
    """Comparison."""
    threshold: float
    """Threshold."""
    value: float | None = None
    """Measured value (absent when the metric could not be computed)."""
    passed: bool
    """Whether the gate passed."""


class EvaluationResult(KubeModel):
    """Evaluation figures and gate outcomes."""

    metrics: dict[str, float] | None = None
    """Metric name to value, e.g. evalLoss, baseEvalLoss, perplexity, rougeL, safetyFlagRatio."""
    gates: Annotated[list[GateResult], Field(max_length=32)] | None = None
    """Each gate with its value."""
    passed: bool | None = None
    """True when every gate passed."""
    report_uri: Uri | None = None
    """Full evaluation report (JSON)."""


class DatasetSourceSummary(KubeModel):
    """One dataset source as the trainer read it."""

    name: Name
    """The source's name in spec.datasets."""
    rows_read: Annotated[int, Field(ge=0)] = 0
    """Rows in the file."""
    rows_used: Annotated[int, Field(ge=0)] = 0
    """Rows that became examples."""
    bad_rows: Annotated[int, Field(ge=0)] = 0
    """Rows that could not be read or converted (examples in dataset_report.json, with file:line)."""


class DatasetSummary(KubeModel):
    """What data preparation did, from the trainer's dataset report (the full one is the artifact's
    dataset_report.json)."""

    rows_in: Annotated[int, Field(ge=0)] = 0
    """Rows read over all sources."""
    train: Annotated[int, Field(ge=0)] = 0
    """Training samples after cleaning, mixing and balancing."""
    validation: Annotated[int, Field(ge=0)] = 0
    """Held-out samples."""
    dropped: dict[str, int] | None = None
    """Rows dropped, by reason: badRow, empty, duplicateExact, duplicateNear, templateError, tooLong, undersampled."""
    redacted_rows: Annotated[int, Field(ge=0)] | None = None
    """Rows in which PII was redacted."""
    redactions: dict[str, int] | None = None
    """Redactions by kind (EMAIL, PHONE, ...)."""
    train_tokens: Annotated[int, Field(ge=0)] | None = None
    """Tokens in the training split."""
    sources: Annotated[list[DatasetSourceSummary], Field(max_length=32)] | None = None
    """Per source."""
    digest: ShortStr | None = None
    """sha256 over the prepared token streams: equal digests, equal training data."""


class Failure(KubeModel):
    """The real cause of a failure."""

    reason: ShortStr
    """e.g. Unschedulable, ImagePullBackOff, OOMKilled, DeadlineExceeded, BackoffLimitExceeded, InvalidSpec, TrainerError."""
    message: Text = ""
    """Details copied from the scheduler, kubelet or trainer."""


class FineTuneJobStatus(KubeModel):
    """Observed state of a fine-tuning run."""

    phase: Phase | None = None
    """For humans: Pending, Queued, Provisioning, Training, Evaluating, Succeeded, Failed or Suspended."""
    conditions: Annotated[list[Condition], Field(max_length=16), Field(json_schema_extra=list_map("type"))] | None = None
    """Accepted, Running, Succeeded, Failed, Suspended (for machines and `kubectl wait`)."""
    observed_generation: int | None = None
    """The generation the status reflects."""
    progress: Progress | None = None
    """Training progress."""
    ray_job_name: ShortStr | None = None
    """Name of the child RayJob (or Job)."""
    start_time: Timestamp | None = None
    """When training first started; from then on the training spec is immutable."""
    completion_time: Timestamp | None = None
    """When the run finished."""
    attempts: Annotated[int, Field(ge=0)] | None = None
    """Training attempts so far (retries within backoffLimit)."""
    artifact: Artifact | None = None
    """The exported model."""
    evaluation: EvaluationResult | None = None
    """Evaluation results and gates."""
    dataset: DatasetSummary | None = None
    """What data preparation read, kept and dropped."""
    failure: Failure | None = None
    """Why the run failed."""


class FineTuneJob(KubeModel):
    """A fine-tuning run of an LLM: data preparation, training on Ray, evaluation, export."""

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    """kubetune.io/v1alpha1"""
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    """FineTuneJob"""
    metadata: dict[str, Any] = {}
    """Standard object metadata."""
    spec: FineTuneJobSpec
    """Desired state."""
    status: FineTuneJobStatus | None = None
    """Observed state, written by the operator."""


# ----------------------------------------------------------------------------- rules


register(
    FineTuneJobSpec,
    Rule(
        "self.method.type != 'qlora' || (has(self.baseModel.quantization) && self.baseModel.quantization.bits == 4)",
        "method qlora needs 4-bit loading: set baseModel.quantization.bits to 4",
        ".baseModel.quantization",
        lambda s: s.method.type != "qlora"
        or (s.base_model.quantization is not None and s.base_model.quantization.bits == 4),
    ),
    Rule(
        "!has(self.baseModel.quantization) || self.method.type in ['lora', 'qlora', 'dora']",
        "quantized loading only works with adapter methods (lora, qlora, dora): remove baseModel.quantization or change method.type",
        ".baseModel.quantization",
        lambda s: s.base_model.quantization is None or s.method.type in ADAPTER_METHODS,
    ),
    Rule(
        "self.objective.type in ['dpo', 'orpo'] ? self.datasets.all(d, d.format == 'preference') : self.datasets.all(d, d.format != 'preference')",
        "objectives dpo and orpo need datasets in format preference; sft needs alpaca, chat or text datasets",
        ".datasets",
        lambda s: all(d.format == "preference" for d in s.datasets)
        if s.objective.type in PREFERENCE_OBJECTIVES
        else all(d.format != "preference" for d in s.datasets),
    ),
    Rule(
        "!self.output.mergeAdapter || self.method.type in ['lora', 'qlora', 'dora']",
        "output.mergeAdapter only applies to adapter methods (lora, qlora, dora)",
        ".output.mergeAdapter",
        lambda s: not s.output.merge_adapter or s.method.type in ADAPTER_METHODS,
    ),
    Rule(
        "self.engine != 'Job' || self.resources.workers == 1",
        "engine Job runs a single worker: set resources.workers to 1 or use engine RayJob",
        ".engine",
        lambda s: s.engine != "Job" or s.resources.workers == 1,
    ),
)
register(
    Method,
    Rule(
        "!has(self.lora) || self.type in ['lora', 'qlora', 'dora']",
        "method.lora is only used by method types lora, qlora and dora",
        ".lora",
        lambda m: m.lora is None or m.type in ADAPTER_METHODS,
    ),
    Rule(
        "!has(self.freeze) || self.type == 'freeze'",
        "method.freeze is only used by method type freeze",
        ".freeze",
        lambda m: m.freeze is None or m.type == "freeze",
    ),
    Rule(
        "!has(self.hft) || self.type == 'hft'",
        "method.hft is only used by method type hft",
        ".hft",
        lambda m: m.hft is None or m.type == "hft",
    ),
)
register(
    Imbalance,
    Rule(
        "self.strategy == 'none' || has(self.labelField)",
        "imbalance.strategy needs imbalance.labelField",
        ".labelField",
        lambda i: i.strategy == "none" or i.label_field is not None,
    ),
)
register(
    SafetyProbe,
    Rule(
        "self.scorer != 'llamaGuard' || has(self.endpoint)",
        "scorer llamaGuard needs an endpoint",
        ".endpoint",
        lambda p: p.scorer != "llamaGuard" or p.endpoint is not None,
    ),
)

MUTABLE_SPEC_FIELDS = ("suspend", "deployTo", "activeDeadlineSeconds", "backoffLimit")
"""Spec fields that may change at any time."""
PLACEMENT_FIELDS = ("nodeSelector", "tolerations", "affinity", "priorityClassName")
"""resources fields that may change while the job is suspended (as Kueue does)."""
CEL_PLACEMENT_FIELDS = tuple(f for f in PLACEMENT_FIELDS if f != "affinity")
"""affinity is free-form, so the API server cannot bound the cost of comparing it in CEL;
the operator enforces it (`immutable_changes`)."""
IMMUTABLE_SPEC_FIELDS = tuple(
    f.alias for f in FineTuneJobSpec.model_fields.values() if f.alias not in MUTABLE_SPEC_FIELDS + ("resources",)
)
IMMUTABLE_RESOURCE_FIELDS = tuple(
    f.alias for f in Resources.model_fields.values() if f.alias not in PLACEMENT_FIELDS
)


def _cel_unchanged(path: str, field: str) -> str:
    new, old = f"self.{path}", f"oldSelf.{path}"
    return (
        f"(has({new}.{field}) ? (has({old}.{field}) && {new}.{field} == {old}.{field}) : !has({old}.{field}))"
    )


_STARTED = "has(oldSelf.status) && has(oldSelf.status.startTime)"

ROOT_RULES_CEL = [
    {
        "rule": f"!({_STARTED}) || ("
        + " && ".join(_cel_unchanged("spec", f) for f in IMMUTABLE_SPEC_FIELDS)
        + " && "
        + " && ".join(_cel_unchanged("spec.resources", f) for f in IMMUTABLE_RESOURCE_FIELDS)
        + ")",
        "message": "the training spec is immutable once training started; only suspend, deployTo, "
        "activeDeadlineSeconds, backoffLimit and (while suspended) placement may change",
        "fieldPath": ".spec",
    },
    {
        "rule": f"!({_STARTED}) || self.spec.suspend || ("
        + " && ".join(_cel_unchanged("spec.resources", f) for f in CEL_PLACEMENT_FIELDS)
        + ")",
        "message": "placement (nodeSelector, tolerations, affinity, priorityClassName) may only change while suspended",
        "fieldPath": ".spec.resources",
    },
]
"""Transition rules on the whole object: they need status.startTime, which the spec cannot see."""


def immutable_changes(old: FineTuneJobSpec, new: FineTuneJobSpec) -> list[str]:
    """Field paths that changed but may not once training started (pure twin of ROOT_RULES_CEL)."""
    old_wire, new_wire = old.to_wire(), new.to_wire()
    changed = [
        f"spec.{f}" for f in IMMUTABLE_SPEC_FIELDS if old_wire.get(f) != new_wire.get(f)
    ]
    old_res, new_res = old_wire.get("resources", {}), new_wire.get("resources", {})
    changed += [
        f"spec.resources.{f}"
        for f in IMMUTABLE_RESOURCE_FIELDS
        if old_res.get(f) != new_res.get(f)
    ]
    if not new.suspend:
        changed += [
            f"spec.resources.{f}" for f in PLACEMENT_FIELDS if old_res.get(f) != new_res.get(f)
        ]
    return changed
