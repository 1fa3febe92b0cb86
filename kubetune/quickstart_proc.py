"""Running the other components' commands for the quickstart: argv lists, output teed to logs.

Each step runs `python -m kubetune ...` (never a shell), streams its output to the terminal
(progress bars included) and to `<out>/logs/<step>.log`, and turns a failure into a StepFailed
that names the step, the command, the exit code, the log file and the last lines of output.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
UNAVAILABLE_MARK = "not available in this build"


class StepFailed(RuntimeError):
    """A quickstart step failed; str() is the whole explanation for the user."""

    def __init__(self, step: str, message: str, *, log: Path | None = None, tail: str = ""):
        self.step, self.log, self.tail = step, log, tail
        text = f"step '{step}' failed: {message}"
        if log is not None:
            text += f"\n  full log: {log}"
        if tail:
            text += "\n  last lines:\n    " + "\n    ".join(tail.rstrip().splitlines())
        super().__init__(text)


def kubetune_argv(*args: str) -> list[str]:
    """The argv of a kubetune subcommand with this interpreter (works without the script on PATH)."""
    return [sys.executable, "-m", "kubetune", *args]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    env.update(extra or {})
    return env


def run_logged(step: str, argv: list[str], log_path: Path, *, echo=None, cwd: Path | None = None,
               tail_lines: int = 25) -> str:
    """Run argv to completion, teeing output to `echo` (a writable binary stream) and the log.

    Returns the whole output as text; raises StepFailed on a non-zero exit.
    """
    echo = sys.stdout.buffer if echo is None else echo
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    chunks: list[bytes] = []
    with log_path.open("wb") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(), cwd=cwd)
        except OSError as exc:
            raise StepFailed(step, f"cannot start {argv[0]}: {exc.strerror}", log=log_path) from None
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            log.write(chunk)
            log.flush()
            if echo is not None:
                echo.write(chunk)
                echo.flush()
        code = proc.wait()
    output = b"".join(chunks).decode("utf-8", errors="replace")
    for line in output.replace("\r", "\n").splitlines():
        if line.strip():
            tail.append(line)
    if code != 0:
        if UNAVAILABLE_MARK in output:
            message = f"`{shlex.join(argv[2:])}` is not available in this build (its component is not installed)"
        else:
            message = f"`{shlex.join(argv[2:] if argv[1:2] == ['-m'] else argv)}` exited with code {code}"
        raise StepFailed(step, message, log=log_path, tail="\n".join(tail))
    return output


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Background:
    """A long-running command (the gateway) with its output in a log file; a context manager
    that always stops it."""

    def __init__(self, step: str, argv: list[str], log_path: Path):
        self.step, self.argv, self.log_path = step, argv, log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> Background:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._log.write(f"$ {shlex.join(self.argv)}\n".encode())
        self._log.flush()
        try:
            self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=child_env(),
                                         start_new_session=True)
        except OSError as exc:
            self._log.close()
            raise StepFailed(self.step, f"cannot start {self.argv[0]}: {exc.strerror}", log=self.log_path) from None
        return self

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])

    def check_alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            message = f"`{shlex.join(self.argv[2:])}` exited with code {code}"
            if UNAVAILABLE_MARK in self.tail(100):
                message = f"`{shlex.join(self.argv[2:])}` is not available in this build"
            raise StepFailed(self.step, message, log=self.log_path, tail=self.tail())

    def wait_until(self, ready, *, timeout: float, what: str, interval: float = 1.0) -> None:
        """Poll `ready()` until it returns True; fail early when the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not up yet: connection refused and the like
                pass
            time.sleep(interval)
        raise StepFailed(self.step, f"{what} not ready after {timeout:.0f} s", log=self.log_path, tail=self.tail())

    def __exit__(self, *exc) -> None:
        # The command runs in its own session: signal its whole group (it may have started an
        # engine process of its own), SIGTERM first, SIGKILL if it does not stop.
        if self.proc is not None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
