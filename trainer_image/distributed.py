"""Ray Train: run `loop.train_loop` on N workers with `TorchTrainer` (DDP over gloo or NCCL).

Progress leaves the rank-0 worker through a Ray queue and reaches the driver's sinks there, so
sinks (a terminal bar, a file, the in-pod status writer) live in one process and need not be
picklable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from .errors import TrainerConfigError, TrainingFailedError
from .loop import LoopConfig, LoopResult, train_loop

log = logging.getLogger(__name__)


class QueueRelay:
    """A ProgressSink on the worker side: forwards calls into a Ray queue (never blocks training)."""

    def __init__(self, queue):
        self.queue = queue

    def _put(self, method: str, *args) -> None:
        # Fire and forget: a step never waits on a round trip to the queue actor. Calls from one
        # worker to one actor run in submission order, and the blocking `loop_result` put
        # comes last, so the driver has every progress line once that returns.
        try:
            self.queue.actor.put_nowait.remote((method, args))
        except Exception:  # noqa: BLE001 - a dead queue only loses progress lines
            log.debug("progress relay dropped %s", method, exc_info=True)

    def on_progress(self, progress: dict) -> None:
        self._put("on_progress", progress)

    def on_phase(self, phase: str, message: str = "") -> None:
        self._put("on_phase", phase, message)

    def on_result(self, status: dict) -> None:
        self._put("on_result", status)

    def close(self) -> None:
        pass

    def loop_result(self, result: dict) -> None:
        """Rank 0's LoopResult for the driver (Ray Train V2 keeps metrics only with checkpoints)."""
        self.queue.put((RESULT, (result,)))


RESULT = "_loop_result"


class _Drain(threading.Thread):
    """Moves relayed calls from the queue to the driver's sink until stopped, then empties it."""

    def __init__(self, queue, sink):
        super().__init__(name="kubetune-progress-drain", daemon=True)
        self.queue, self.sink = queue, sink
        self._stop_event = threading.Event()
        self.result: dict | None = None

    def _deliver(self, item) -> None:
        method, args = item
        if method == RESULT:
            self.result = args[0]
        elif self.sink is not None:
            getattr(self.sink, method)(*args)

    def run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop_event.is_set():
            try:
                self._deliver(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue actor died with the run
                log.debug("progress drain stopped", exc_info=True)
                return
        while True:
            try:
                self._deliver(self.queue.get_nowait())
            except Exception:  # noqa: BLE001 - Empty, or the actor is gone
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def use_reserved_cpus() -> int:
    """Give torch one thread per CPU Ray reserved for this worker; returns the thread count.

    Ray exports OMP_NUM_THREADS=<num_cpus> to an actor that reserves CPUs (and 1 to one that
    does not), and torch sizes its pool from it at import. Setting it from the reservation
    itself keeps a worker from training on one thread when torch was imported earlier or the
    variable came from elsewhere, and never oversubscribes the worker's share of the node.
    """
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus and int(cpus) >= 1 and torch.get_num_threads() != int(cpus):
        torch.set_num_threads(int(cpus))
    threads = torch.get_num_threads()
    log.info("torch threads: %d (CPUs reserved by Ray for this worker: %s)", threads, cpus)
    return threads


def _worker_entry(config: dict[str, Any]) -> None:
    cfg: LoopConfig = config["cfg"]
    if not cfg.use_gpu:
        use_reserved_cpus()
    result = train_loop(cfg)
    if ray_rank() == 0:
        cfg.sink.loop_result(dataclasses.asdict(result))


def ray_rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


def cpu_quantity(value: str | int) -> int:
    """Whole CPUs of a Kubernetes quantity (`4`, `500m`, `2.5`), at least 1."""
    text = str(value)
    cpus = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, int(cpus))


def unique_run_name(job_name: str) -> str:
    return f"{job_name}-{uuid.uuid4().hex[:8]}"


def config_error_in(exc: BaseException) -> BaseException | None:
    """The first TrainerConfigError in an exception's chain or in Ray's worker failures."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TrainerConfigError):
            return e
        for attr in ("__cause__", "__context__", "cause"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(v for v in failures.values() if isinstance(v, BaseException))
    return None


@contextlib.contextmanager
def relayed_to(sink) -> Iterator[tuple[QueueRelay, _Drain]]:
    """A QueueRelay for code on Ray workers whose calls reach `sink` in this process, and the
    drain (its `.result` holds a relayed loop_result); everything relayed is delivered on exit."""
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    drain = _Drain(queue, sink)
    drain.start()
    try:
        yield QueueRelay(queue), drain
    finally:
        drain.stop()
        try:
            queue.shutdown()
        except Exception:  # noqa: BLE001 - the queue actor went with the cluster
            pass


def run_on_ray(
    cfg: LoopConfig,
    *,
    workers: int,
    use_gpu: bool,
    storage: Path,
    run_name: str,
    sink=None,
    cpus_per_worker: int = 1,
) -> LoopResult:
    """Train with `TorchTrainer` on the Ray cluster this process is connected to."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with relayed_to(sink) as (relay, drain):
        worker_cfg = dataclasses.replace(cfg, sink=relay, train=ray.put(cfg.train), use_gpu=use_gpu)
        trainer = TorchTrainer(
            _worker_entry,
            train_loop_config={"cfg": worker_cfg},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(
                name=run_name,
                storage_path=str(Path(storage).resolve()),
                # Retries are the operator's (backoffLimit); each one resumes from our checkpoints.
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        try:
            result = trainer.fit()
        except Exception as exc:
            config_error = config_error_in(exc)
            if config_error is not None:
                raise TrainerConfigError(str(config_error)) from exc
            raise TrainingFailedError(
                f"training failed on Ray ({type(exc).__name__}: {exc}); completed checkpoints are kept in "
                f"{cfg.checkpoint_dir} and a rerun with the same spec resumes from the latest"
            ) from exc
    if getattr(result, "error", None) is not None:
        raise TrainingFailedError(f"training failed on Ray: {result.error}")
    if drain.result is None:
        raise TrainingFailedError("training finished without reporting a result")
    return LoopResult(**drain.result)
