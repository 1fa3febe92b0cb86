"""Progress reporting: the ProgressSink protocol of docs/contracts.md and the shipped sinks.

The trainer calls sinks on the rank-0 worker or the driver only. Sinks never raise into
training: a broken status writer must not kill a run that has hours of GPU time in it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

STATUS_SINK_MODULE = "kubetune.status_writer"
STATUS_SINK_CLASS = "FineTuneJobStatusSink"
PROGRESS_KEYS = (
    "step", "totalSteps", "epoch", "loss", "learningRate", "tokensPerSecond", "etaSeconds", "updatedTime",
)


@runtime_checkable
class ProgressSink(Protocol):
    def on_progress(self, progress: dict) -> None: ...

    def on_phase(self, phase: str, message: str = "") -> None: ...

    def on_result(self, status: dict) -> None: ...

    def close(self) -> None: ...


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def make_progress(
    *,
    step: int,
    total_steps: int,
    epoch: float,
    loss: float,
    learning_rate: float,
    tokens_per_second: float,
    eta_seconds: float | None,
) -> dict:
    """A progress dict with exactly the wire keys of FineTuneJob.status.progress."""
    return {
        "step": int(step),
        "totalSteps": int(total_steps),
        "epoch": round(float(epoch), 4),
        "loss": float(loss) if math.isfinite(loss) else None,
        "learningRate": float(learning_rate),
        "tokensPerSecond": round(float(tokens_per_second), 2),
        "etaSeconds": None if eta_seconds is None else max(0, int(round(eta_seconds))),
        "updatedTime": now_rfc3339(),
    }


class ThroughputMeter:
    """Tokens/s and ETA over the steps done in this process (a resumed run restarts the clock)."""

    def __init__(self, start_step: int, total_steps: int, clock=time.monotonic):
        self._clock = clock
        self._t0 = clock()
        self._start_step = start_step
        self.total_steps = total_steps
        self.tokens = 0

    def add_tokens(self, n: int) -> None:
        self.tokens += int(n)

    def tokens_per_second(self) -> float:
        elapsed = self._clock() - self._t0
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self, step: int) -> float | None:
        done = step - self._start_step
        if done <= 0:
            return None
        per_step = (self._clock() - self._t0) / done
        return per_step * (self.total_steps - step)


def _fmt_eta(seconds: int | None) -> str:
    if seconds is None:
        return "--:--"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ConsoleSink:
    """A progress bar on a terminal; one plain line per report elsewhere (logs, CI, pods)."""

    def __init__(self, stream: IO[str] | None = None, width: int = 24):
        self.stream = stream or sys.stderr
        self.width = width
        self._bar_open = False
        self._bar_len = 0

    @property
    def is_tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def format(self, p: dict) -> str:
        step, total = p.get("step", 0), p.get("totalSteps") or 0
        loss = p.get("loss")
        fields = (
            f"step {step}/{total}",
            f"loss {loss:.4f}" if loss is not None else "loss n/a",
            f"lr {p.get('learningRate', 0):.2e}",
            f"{p.get('tokensPerSecond', 0):.0f} tok/s",
            f"ETA {_fmt_eta(p.get('etaSeconds'))}",
        )
        if not self.is_tty:
            return "[train] " + " | ".join(fields)
        filled = int(self.width * step / total) if total else 0
        bar = "#" * filled + "-" * (self.width - filled)
        return f"[{bar}] " + " | ".join(fields)

    def on_progress(self, progress: dict) -> None:
        line = self.format(progress)
        if self.is_tty:
            # pad over the previous bar: a shorter line (lower tok/s, shorter ETA) must not leave its tail
            self.stream.write("\r" + line.ljust(self._bar_len))
            self._bar_len = len(line)
            self._bar_open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
            self._bar_len = 0

    def on_phase(self, phase: str, message: str = "") -> None:
        self._end_bar()
        self.stream.write(f"[{phase}] {message}".rstrip() + "\n")
        self.stream.flush()

    def on_result(self, status: dict) -> None:
        self._end_bar()
        artifact = status.get("artifact") or {}
        evaluation = status.get("evaluation") or {}
        if status.get("dataset"):
            from .data_report import summary_line

            self.stream.write(f"[Data] {summary_line(status['dataset'])}\n")
        if artifact:
            self.stream.write(f"[Result] artifact {artifact.get('kind')} at {artifact.get('uri')}\n")
        if evaluation:
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in (evaluation.get("metrics") or {}).items())
            self.stream.write(f"[Result] gates passed: {evaluation.get('passed')}; {metrics}\n")
        self.stream.flush()

    def close(self) -> None:
        self._end_bar()


class JsonLinesSink:
    """`<output>/progress.jsonl`: one object per call, flushed at once so `tail -f` works."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def _write(self, obj: dict) -> None:
        with self._lock:
            if self._file.closed:
                return
            self._file.write(json.dumps(obj, sort_keys=True) + "\n")
            self._file.flush()

    def on_progress(self, progress: dict) -> None:
        self._write({"event": "progress", **progress})

    def on_phase(self, phase: str, message: str = "") -> None:
        self._write({"event": "phase", "phase": phase, "message": message, "time": now_rfc3339()})

    def on_result(self, status: dict) -> None:
        self._write({"event": "result", **status})

    def close(self) -> None:
        with self._lock:
            self._file.close()
        try:  # progress.svg for a person; a plot that fails must not fail the run
            from .progress_plot import write_plot

            write_plot(self.path, title=f"training progress ({self.path.parent.name})")
        except (OSError, ValueError) as exc:
            log.warning("could not write the progress plot beside %s: %s", self.path, exc)


class FanOutSink:
    """Calls every sink; one failing sink is logged and does not stop the others or training."""

    def __init__(self, sinks: list[Any]):
        self.sinks = [s for s in sinks if s is not None]

    def _each(self, method: str, *args) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception:  # noqa: BLE001 - a sink must never break training
                log.warning("progress sink %s.%s failed", type(sink).__name__, method, exc_info=True)

    def on_progress(self, progress: dict) -> None:
        self._each("on_progress", progress)

    def on_phase(self, phase: str, message: str = "") -> None:
        self._each("on_phase", phase, message)

    def on_result(self, status: dict) -> None:
        self._each("on_result", status)

    def close(self) -> None:
        self._each("close")


class RecordingSink:
    """Keeps every event in memory: for callers that want the history (tests, notebooks)."""

    def __init__(self):
        self.events: list[tuple[str, Any]] = []

    def on_progress(self, progress: dict) -> None:
        self.events.append(("progress", dict(progress)))

    def on_phase(self, phase: str, message: str = "") -> None:
        self.events.append(("phase", (phase, message)))

    def on_result(self, status: dict) -> None:
        self.events.append(("result", status))

    def close(self) -> None:
        self.events.append(("close", None))

    def progress(self) -> list[dict]:
        return [e for kind, e in self.events if kind == "progress"]


def load_status_sink(environ: dict[str, str] | None = None):
    """The in-pod FineTuneJob status writer, when KUBETUNE_JOB_NAME/NAMESPACE are set.

    Loaded by module name so the trainer package never imports `kubernetes` itself. Absent
    module or a failing constructor: a warning, and training goes on without it.
    """
    env = os.environ if environ is None else environ
    name, namespace = env.get("KUBETUNE_JOB_NAME"), env.get("KUBETUNE_JOB_NAMESPACE")
    if not name or not namespace:
        return None
    try:
        module = importlib.import_module(STATUS_SINK_MODULE)
        return getattr(module, STATUS_SINK_CLASS)(namespace, name)
    except Exception as exc:  # noqa: BLE001 - ImportError or a client that cannot start
        log.warning(
            "not reporting progress to FineTuneJob %s/%s: %s.%s unavailable (%s)",
            namespace, name, STATUS_SINK_MODULE, STATUS_SINK_CLASS, exc,
        )
        return None


def default_sinks(output_dir: str | Path | None, *, console: bool = True, stream: IO[str] | None = None) -> FanOutSink:
    """Console + `<output>/progress.jsonl` + the in-pod status writer when configured."""
    sinks: list[Any] = []
    if console:
        sinks.append(ConsoleSink(stream))
    if output_dir is not None:
        sinks.append(JsonLinesSink(Path(output_dir) / "progress.jsonl"))
    sinks.append(load_status_sink())
    return FanOutSink(sinks)
