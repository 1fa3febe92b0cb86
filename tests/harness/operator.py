"""Run the real kopf operator in-process (in a thread) against the emulator."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any


class OperatorRunner:
    """`kubetune.operator.main.run_operator` in a background thread; start() waits until ready.

    stop() sets kopf's stop flag and joins, so a test can simulate an operator restart by
    stopping one runner and starting another against the same emulator.
    """

    def __init__(self, kubeconfig: Path, **settings_overrides: Any):
        from kubetune.operator.settings import Settings

        defaults = {"resync_seconds": 1.0, "metrics_port": 0, "api_threads": 8}
        self.settings = dataclasses.replace(Settings.from_env({}), **{**defaults, **settings_overrides})
        self.kubeconfig = Path(kubeconfig)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> OperatorRunner:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        self._thread = threading.Thread(target=self._run, name="kubetune-operator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the operator was not ready within {timeout}s (error: {self.error!r})")
        if self.error is not None:  # e.g. a handler module that does not import
            raise RuntimeError(f"the operator failed to start: {self.error!r}") from self.error

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("the operator did not stop within the timeout")
        self._thread = None

    def _run(self) -> None:
        from kubetune.operator.k8s import KubeApi, load_api_client
        from kubetune.operator.main import run_operator

        try:
            api = KubeApi(load_api_client(str(self.kubeconfig)), threads=self.settings.api_threads)
            asyncio.run(run_operator(self.settings, api=api, standalone=True,
                                     stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as exc:  # reported by start()/tests
            self.error = exc
            self._ready.set()
