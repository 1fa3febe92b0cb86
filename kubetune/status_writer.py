"""In-pod progress reporter: patches `finetunejobs/status` of the job the pod trains.

Loaded by the trainer by module name when KUBETUNE_JOB_NAMESPACE/KUBETUNE_JOB_NAME are set
(so the trainer never imports `kubernetes`). It runs with the job's own ServiceAccount,
which may only get/patch that one job's status. Progress is throttled to one patch per
`min_interval` seconds (the latest value wins); phases and final results are written at
once and retried, because losing them would lie about the run. Reporting never raises into
the training loop: a failed progress patch is logged and the next one carries newer data.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
TRAINER_PHASES = {"Training": "Training", "Evaluating": "Evaluating", "Exporting": "Evaluating"}
"""Trainer phases -> FineTuneJob phases (exporting is the tail of evaluation for users)."""


def _default_api_client() -> Any:
    import kubernetes

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=config)
        return kubernetes.client.ApiClient(config)
    return kubernetes.config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


class StatusWriteError(RuntimeError):
    """A status patch was refused or could not be sent."""


class FineTuneJobStatusSink:
    """ProgressSink (docs/contracts.md) writing to the FineTuneJob's status subresource."""

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        api_client: Any = None,
        min_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        retries: int = 3,
        retry_delay: float = 0.5,
    ):
        if not namespace or not name:
            raise ValueError("FineTuneJobStatusSink needs the job's namespace and name")
        self.namespace, self.name = namespace, name
        self.min_interval = min_interval
        self._clock = clock
        self._retries = max(1, retries)
        self._retry_delay = retry_delay
        self._api_client = api_client if api_client is not None else _default_api_client()
        self._lock = threading.Lock()
        self._last_write: float | None = None
        self._pending: dict[str, Any] | None = None
        self.writes = 0

    @property
    def path(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}/status"

    # ------------------------------------------------------------------ ProgressSink

    def on_progress(self, progress: dict) -> None:
        with self._lock:
            self._pending = dict(progress)
            due = self._last_write is None or self._clock() - self._last_write >= self.min_interval
            if not due:
                return
            patch = {"progress": self._pending}
            self._pending = None
        self._send(patch, final=False)

    def on_phase(self, phase: str, message: str = "") -> None:
        mapped = TRAINER_PHASES.get(phase)
        if mapped is None:
            log.debug("trainer phase %r has no FineTuneJob phase; not reported", phase)
            return
        self._send(self._with_pending({"phase": mapped}), final=True)

    def on_result(self, status: dict) -> None:
        allowed = {k: v for k, v in status.items() if k in ("artifact", "evaluation", "dataset")}
        if len(allowed) != len(status):
            log.warning("ignoring status keys the trainer does not own: %s", sorted(set(status) - set(allowed)))
        if allowed:
            self._send(self._with_pending(allowed), final=True)

    def close(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._send({"progress": pending}, final=True)

    # ------------------------------------------------------------------ I/O

    def _with_pending(self, patch: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._pending is not None:
                patch = {"progress": self._pending, **patch}
                self._pending = None
        return patch

    def _patch(self, status: dict[str, Any]) -> None:
        client = self._api_client
        params = client.param_serialize(
            method="PATCH", resource_path=self.path,
            header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
            body={"status": status}, auth_settings=["BearerToken"],
        )
        try:
            resp = client.call_api(*params, _request_timeout=15)
            data = resp.read()
        except Exception as exc:  # connection errors
            raise StatusWriteError(f"PATCH {self.path}: {exc}") from exc
        if not 200 <= resp.status < 300:
            try:
                message = json.loads(data).get("message", "")
            except ValueError:
                message = (data or b"").decode(errors="replace")[:300]
            raise StatusWriteError(f"PATCH {self.path}: {resp.status} {message}")

    def _send(self, status: dict[str, Any], *, final: bool) -> bool:
        attempts = self._retries if final else 1
        for attempt in range(1, attempts + 1):
            try:
                self._patch(status)
            except StatusWriteError as exc:
                if attempt == attempts:
                    level = logging.ERROR if final else logging.WARNING
                    log.log(level, "could not report %s to FineTuneJob %s/%s: %s",
                            sorted(status), self.namespace, self.name, exc)
                    return False
                time.sleep(self._retry_delay * attempt)
                continue
            with self._lock:
                self._last_write = self._clock()
                self.writes += 1
            return True
        return False
