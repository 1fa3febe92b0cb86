"""After training: evaluate the tuned model against its base, probe its safety, export and
publish the artifact, where the accelerators are.

In a RayJob the driver runs on the head pod, which has no GPU, one CPU and a few GiB: loading a
7B model there (twice, tuned and base) is an OOM kill, a QLoRA reload in 4-bit cannot run at
all. So the whole step is one Ray task that asks for a training worker's CPUs and GPUs (the head
starts Ray with num-cpus 0, so it lands on a worker pod, whose resources the finished trainer has
released). Locally the same task runs in a Ray worker process; without Ray it runs in-process.
The driver never loads model weights.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import FineTuneJob

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FinishInput:
    """What the task needs; picklable (Ray ships it to the worker)."""

    job: FineTuneJob
    model_dir: str
    """The base model folder as the driver resolved it (a path on a shared volume or in the cache)."""
    model_source: str | None
    """s3:// URI of the base model: the worker fetches its own copy when model_dir is not there."""
    checkpoint: str
    """The final checkpoint (shared volume, or pulled from checkpoint_remote)."""
    checkpoint_remote: str | None
    prepared: Any
    """PreparedData without its training samples: validation, eval prompts, report, reference."""
    output_dir: str
    publish: bool
    """Upload the exported folder to spec.output.uri (s3://) after writing it."""
    max_lora_rank: int | None
    sink: Any = None
    """Gets the Exporting phase (under Ray: a relay to the driver's sinks)."""


def evaluate_and_export(inp: FinishInput) -> dict:
    """Load the tuned model from the checkpoint, evaluate it, export it; the status for sinks."""
    from . import checkpoint_remote, evaluation, export, model_init
    from .pipeline import load_trained_model, publish_output, validation_for_eval

    job, spec = inp.job, inp.job.spec
    model_dir = model_init.worker_model_dir(inp.model_dir, inp.model_source)
    checkpoint = Path(inp.checkpoint)
    if inp.checkpoint_remote and not checkpoint.is_dir():  # rank 0 wrote it in another pod
        pulled = checkpoint_remote.pull_latest(inp.checkpoint_remote, checkpoint.parent)
        checkpoint = pulled.path if pulled else checkpoint
    tokenizer = model_init.load_tokenizer(spec, model_dir)
    device = "cuda" if model_init.cuda_available() else "cpu"
    model = load_trained_model(job, model_dir, str(checkpoint), device=device)

    def base_model_fn():
        return model_init.load_model(spec, model_dir, device=device).eval()

    report = evaluation.evaluate_job(
        spec, tokenizer, tuned_model=model, base_model_fn=base_model_fn,
        validation=validation_for_eval(inp.prepared.validation), log=log.info,
        eval_prompts=inp.prepared.eval_prompts or None,  # used when the spec names no prompts of its own
    )
    output_dir = Path(inp.output_dir)
    if inp.sink is not None:
        inp.sink.on_phase("Exporting", str(output_dir))
    status = export.export_artifact(
        model=model, tokenizer=tokenizer, job=job, output_dir=output_dir, evaluation=report,
        prepared=inp.prepared, base_model_dir=model_dir, log=log.info, max_lora_rank=inp.max_lora_rank,
    )
    if inp.publish:
        publish_output(job, output_dir)
    return status


def run_finish(inp: FinishInput, *, use_ray: bool, use_gpu: bool, cpus: int) -> dict:
    """evaluate_and_export on a Ray worker with a training worker's resources (or in-process)."""
    if not use_ray:
        return evaluate_and_export(inp)
    import ray

    from .distributed import config_error_in, relayed_to
    from .errors import TrainerConfigError

    gpus = inp.job.spec.resources.gpus_per_worker if use_gpu else 0
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_on_worker)
    with relayed_to(inp.sink) as (relay, _):
        try:
            return ray.get(task.remote(dataclasses.replace(inp, sink=relay), use_gpu))
        except ray.exceptions.RayTaskError as exc:
            config_error = config_error_in(exc)
            if config_error is not None:
                raise TrainerConfigError(str(config_error)) from exc
            raise exc.as_instanceof_cause() from None


def _on_worker(inp: FinishInput, use_gpu: bool) -> dict:
    if not use_gpu:
        from .distributed import use_reserved_cpus

        use_reserved_cpus()  # torch uses the CPUs Ray reserved for the task, not one thread
    return evaluate_and_export(inp)
