"""The whole job in one call: prepare data -> init model -> train on Ray -> evaluate -> export.

Everything that can be wrong with the spec, the model folder, the hardware or the data is found
before a Ray worker starts and raised as TrainerConfigError with what to change. The trained
state travels from the workers to the driver through the final checkpoint, which is also what a
restarted run resumes from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import ADAPTER_METHODS, MAX_LORA_RANK_ANNOTATION, FineTuneJob
from kubetune.api.uris import local_path
from kubetune.common import object_store

from . import data_report, methods, model_init
from .allocator import worker_allocator_env
from .errors import TrainerConfigError
from .loop import LoopConfig, LoopResult, forward_tokens_from_env, gpu_options_from_env, train_loop
from .progress import FanOutSink

log = logging.getLogger(__name__)

RAY_STORAGE = "ray-runs"
"""Ray Train's run storage, inside the checkpoint storage (export keeps checkpoints/)."""


@dataclass
class PipelineResult:
    output_dir: Path
    status: dict
    """The partial FineTuneJob.status given to sinks.on_result (artifact, evaluation)."""
    training: LoopResult


def _staging(kind: str, job: FineTuneJob) -> Path:
    """A local folder standing in for an s3:// location in this pod (uploaded from there)."""
    meta = job.metadata or {}
    return model_init.remote_cache_root() / kind / f"{meta.get('namespace') or 'local'}-{meta.get('name') or 'job'}"


def output_dir_of(job: FineTuneJob, output: Path | None) -> Path:
    """Where export writes the artifact here; for an s3:// output, a local folder published after."""
    if output is not None:
        return Path(output)
    if object_store.is_remote(job.spec.output.uri):
        return _staging("output", job)
    try:
        return Path(local_path(job.spec.output.uri))
    except ValueError as exc:
        raise TrainerConfigError(
            f"spec.output.uri {job.spec.output.uri!r}: {exc}; use a local path, file://, pvc:// or s3:// (or --output DIR)"
        ) from exc


def checkpoint_dir_of(job: FineTuneJob, output_dir: Path) -> Path:
    """Where checkpoints are written here; for s3:// checkpointing a local folder mirrored there."""
    uri = job.spec.checkpointing.uri
    if uri is None:
        return output_dir / "checkpoints"
    if object_store.is_remote(uri):
        return _staging("checkpoints", job)
    try:
        return Path(local_path(uri))
    except ValueError as exc:
        raise TrainerConfigError(f"spec.checkpointing.uri {uri!r}: {exc}; use a local path, file://, pvc:// or s3://") from exc


def checkpoint_remote_of(job: FineTuneJob) -> str | None:
    uri = job.spec.checkpointing.uri
    return uri.rstrip("/") if object_store.is_remote(uri) else None


def publish_output(job: FineTuneJob, output_dir: Path, log_fn=log.info) -> None:
    """Upload the exported artifact to its s3:// URI, manifest.json last: a reader that finds
    the manifest finds every file it lists."""
    uri = job.spec.output.uri
    if not object_store.is_remote(uri):
        return
    from .manifest import MANIFEST_FILE

    try:
        count = object_store.upload_tree(output_dir, uri, last=(MANIFEST_FILE,))
    except object_store.ObjectStoreError as exc:
        raise TrainerConfigError(f"spec.output.uri: {exc}; the artifact is kept in {output_dir}") from exc
    log_fn(f"export: {count} files published to {uri} (manifest.json last)")


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_model_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainerConfigError(f"{model_dir / 'config.json'}: unreadable ({exc})") from exc


def _check_eval_prompts_file(job: FineTuneJob) -> None:
    uri = job.spec.evaluation.prompts_uri
    if uri is None:
        return
    try:
        path = model_init.local_file(uri, "spec.evaluation.promptsUri")
    except ValueError as exc:
        raise TrainerConfigError(f"spec.evaluation.promptsUri {uri!r}: {exc}") from exc
    if not path.is_file():
        raise TrainerConfigError(
            f"spec.evaluation.promptsUri {uri!r}: {path} is not a file (checked before training, so "
            "evaluation does not fail after it)"
        )


def deployment_max_lora_rank(job: FineTuneJob) -> int | None:
    """The serving engine's max LoRA rank, from the manifest's annotation (None: unknown)."""
    value = ((job.metadata or {}).get("annotations") or {}).get(MAX_LORA_RANK_ANNOTATION)
    if value is None:
        return None
    try:
        rank = int(str(value).strip())
    except ValueError:
        rank = 0
    if rank < 1:
        raise TrainerConfigError(f"metadata.annotations[{MAX_LORA_RANK_ANNOTATION!r}]: {value!r} is not a positive integer")
    return rank


def check_lora_rank(job: FineTuneJob) -> None:
    """An adapter the serving engine would refuse fails now, not after training."""
    limit = deployment_max_lora_rank(job)
    spec = job.spec
    if limit is None or spec.method.type not in ADAPTER_METHODS:
        return
    rank = methods.lora_settings(spec).rank  # the default when spec.method.lora is unset
    if rank > limit:
        target = f"ModelDeployment {spec.deploy_to.name}" if spec.deploy_to else "the serving engine"
        raise TrainerConfigError(
            f"spec.method.lora.rank: {rank} is above the max LoRA rank {limit} of {target} "
            f"(metadata.annotations[{MAX_LORA_RANK_ANNOTATION!r}]): vLLM would refuse the adapter. Lower the "
            "rank, or raise the deployment's spec.engine.maxLoraRank")


def preflight(job: FineTuneJob, *, base_dir: Path | None = None, cuda: bool | None = None):
    """Model folder, method and hardware checks; returns (model_dir, tokenizer). No Ray needed."""
    spec = job.spec
    check_lora_rank(job)
    gpu_options_from_env(os.environ)  # a typo in the trainer's environment fails in seconds
    forward_tokens_from_env(os.environ)
    model_dir = model_init.resolve_model_dir(spec, base_dir, weights=False)  # weights load on the workers
    methods.check_method(spec, _read_model_config(model_dir))
    model_init.check_hardware(spec, cuda=cuda)
    _check_eval_prompts_file(job)
    tokenizer = model_init.load_tokenizer(spec, model_dir)
    return model_dir, tokenizer


def prepare_data(job: FineTuneJob, tokenizer, *, base_dir: Path | None):
    from .data_prepare import DataError, prepare

    try:
        return prepare(job.spec, tokenizer, base_dir=base_dir, log=log.info)
    except DataError as exc:
        raise TrainerConfigError(str(exc)) from exc


def _connect_ray(local: bool, workers: int, worker_env: dict[str, str] | None = None):
    """Connect to the Ray cluster (in a pod: KubeRay's; locally: start one). True if we started it.

    `worker_env` goes to the workers of a local cluster (a pod's workers inherit the image's).
    """
    import ray

    if ray.is_initialized():
        return False
    worker_env = worker_env or {}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        ray.init(
            num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, configure_logging=False,
            log_to_driver=True,
            runtime_env={"worker_process_setup_hook": "kubetune.trainer.ray_quiet.quiet_ray_train_noise",
                         **({"env_vars": worker_env} if worker_env else {})},
        )
        if worker_env.get("LD_PRELOAD"):
            log.info("training workers allocate with %s (KUBETUNE_ALLOCATOR=system for glibc)",
                     worker_env["LD_PRELOAD"].split()[-1])
    else:
        ray.init()
    return True


def _cpus_per_worker(local: bool, workers: int, requested) -> int:
    """CPUs each worker reserves; Ray sets the worker's OMP/torch threads to this number.

    Locally the machine's CPUs are shared out between the workers (one CPU each would leave
    torch single-threaded); in a cluster each worker gets spec.resources.cpu, capped by what
    the cluster has so a fit never waits for CPUs that do not exist.
    """
    import ray

    from .distributed import cpu_quantity

    share = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    return share if local else min(cpu_quantity(requested), share)


def _gpus_available(local: bool) -> bool:
    if local:
        return model_init.cuda_available()
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def train(
    job: FineTuneJob,
    *,
    model_dir: Path,
    train_samples: list,
    pad_id: int,
    checkpoint_dir: Path,
    local: bool,
    sink=None,
    use_ray: bool = True,
    fail_after_step: int | None = None,
) -> LoopResult:
    """Train on Ray (TorchTrainer) or, with use_ray=False, in this process as a single worker."""
    spec = job.spec
    cfg = LoopConfig(
        spec=spec, model_dir=str(model_dir), train=train_samples, checkpoint_dir=str(checkpoint_dir),
        pad_id=pad_id, sink=sink, fail_after_step=fail_after_step, **gpu_options_from_env(os.environ),
        forward_tokens=forward_tokens_from_env(os.environ), checkpoint_remote=checkpoint_remote_of(job),
        model_source=spec.base_model.uri if object_store.is_remote(spec.base_model.uri) else None,
    )
    workers = spec.resources.workers
    if not use_ray:
        if workers != 1:
            log.warning("training in-process runs a single worker; spec.resources.workers=%d ignored", workers)
        cfg.use_gpu = spec.resources.gpus_per_worker > 0 and model_init.cuda_available()
        return train_loop(cfg)
    from .distributed import run_on_ray, unique_run_name

    started = _connect_ray(local, workers, worker_allocator_env(os.environ) if local else None)
    try:
        use_gpu = spec.resources.gpus_per_worker > 0 and _gpus_available(local)
        if spec.resources.gpus_per_worker > 0 and not use_gpu:
            log.warning(
                "spec.resources.gpusPerWorker is %d but no GPU is available here: training on CPU",
                spec.resources.gpus_per_worker,
            )
        return run_on_ray(
            cfg, workers=workers, use_gpu=use_gpu, storage=checkpoint_dir / RAY_STORAGE,
            run_name=unique_run_name((job.metadata or {}).get("name") or "finetunejob"), sink=sink,
            cpus_per_worker=_cpus_per_worker(local, workers, spec.resources.cpu),
        )
    finally:
        if started:
            import ray

            ray.shutdown()


def validation_for_eval(samples: list) -> list:
    """Preference pairs are evaluated as SFT on the chosen answer (evaluation measures loss on SFT samples)."""
    from .data_prepare import PreferenceSample, SftSample

    out = []
    for s in samples:
        if isinstance(s, PreferenceSample):
            out.append(SftSample(list(s.prompt_ids) + list(s.chosen_ids), [-100] * len(s.prompt_ids) + list(s.chosen_ids)))
        else:
            out.append(s)
    return out


def load_trained_model(job: FineTuneJob, model_dir: Path, checkpoint_path: str, *, device: str = "cpu"):
    """Base model + method + the final checkpoint's tensors: the trained model, on the driver."""
    from . import checkpoint as ckpt
    from .loop import load_trained_state, seed_all

    spec = job.spec
    model = model_init.load_model(spec, model_dir, device=device)
    seed_all(spec.hyperparameters.seed)
    model = methods.apply_method(model, spec)
    path = Path(checkpoint_path)
    ref = ckpt.CheckpointRef(path, int(path.name.split("-")[-1]))
    load_trained_state(model, spec, ref)
    model.eval()
    return model


def run(
    job: FineTuneJob,
    *,
    output: Path | None = None,
    local: bool = True,
    sinks=None,
    base_dir: Path | None = None,
    use_ray: bool = True,
) -> PipelineResult:
    """Run the whole job; `sinks` (a ProgressSink or a list of them) get progress and the result.

    `local`: start a Ray on this machine for training; otherwise connect to the cluster this
    pod belongs to (KubeRay sets RAY_ADDRESS), whose GPUs decide what the hardware can run.
    """
    sink = FanOutSink(list(sinks) if isinstance(sinks, (list, tuple)) else [sinks])
    ray_started: list[bool] = []
    try:
        if use_ray and not local:  # the cluster's GPUs decide what pre-flight accepts
            ray_started.append(_connect_ray(False, job.spec.resources.workers))
            cuda = _gpus_available(False)
        else:
            cuda = model_init.cuda_available()
        return _run(job, output=output, local=local, sink=sink, base_dir=base_dir, use_ray=use_ray, cuda=cuda,
                    ray_started=ray_started)
    finally:
        if any(ray_started):
            import ray

            ray.shutdown()


def _run(job: FineTuneJob, *, output, local, sink, base_dir, use_ray, cuda, ray_started: list[bool]) -> PipelineResult:
    from .errors import TrainingFailedError

    spec = job.spec
    output_dir = output_dir_of(job, output)
    checkpoint_dir = checkpoint_dir_of(job, output_dir)

    sink.on_phase("Training", "checking the model and preparing data")
    model_dir, tokenizer = preflight(job, base_dir=base_dir, cuda=cuda)
    data = prepare_data(job, tokenizer, base_dir=base_dir)
    write_json_atomic(output_dir / "dataset_report.json", data.report)
    sink.on_result({"dataset": data_report.status_summary(data.report)})

    sink.on_phase("Training", f"{len(data.train)} samples on {spec.resources.workers} worker(s), method {spec.method.type}")
    if use_ray and local:  # started once pre-flight passed; it stays up for evaluation and export
        ray_started.append(_connect_ray(True, spec.resources.workers, worker_allocator_env(os.environ)))
    result = train(
        job, model_dir=model_dir, train_samples=data.train, pad_id=tokenizer.pad_token_id,
        checkpoint_dir=checkpoint_dir, local=local, sink=sink, use_ray=use_ray,
    )
    remote = checkpoint_remote_of(job)  # the finishing task pulls it when rank 0 ran in another pod
    if not result.checkpoint:
        raise TrainingFailedError(f"training finished but no checkpoint is in {remote or checkpoint_dir}")

    sink.on_phase("Evaluating", f"{len(data.validation)} validation samples")
    from .finish import FinishInput, run_finish

    use_gpu = spec.resources.gpus_per_worker > 0 and (_gpus_available(local) if use_ray else cuda)
    status = run_finish(
        FinishInput(
            job=job, model_dir=str(model_dir), checkpoint=result.checkpoint, checkpoint_remote=remote,
            model_source=spec.base_model.uri if object_store.is_remote(spec.base_model.uri) else None,
            prepared=dataclasses.replace(data, train=[]), output_dir=str(output_dir),
            publish=output is None,  # --output DIR replaces the spec's destination: nothing to publish
            max_lora_rank=deployment_max_lora_rank(job), sink=sink,
        ),
        use_ray=use_ray, use_gpu=use_gpu,
        cpus=_cpus_per_worker(local, spec.resources.workers, spec.resources.cpu) if use_ray else 1,
    )
    sink.on_result(status)
    return PipelineResult(output_dir=output_dir, status=status, training=result)
