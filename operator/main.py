"""The operator process: kopf configured for kubetune, our handlers, metrics and login.

`run_operator()` is what `kubetune operator` and the tests call; it runs kopf in the
current event loop until `stop_flag` is set.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import kopf

from . import events
from .k8s import KubeApi
from .metrics import start_metrics_server
from .render_common import LABEL_MODELDEPLOYMENT
from .settings import Settings

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "kubetune.io"
FINALIZER = "kubetune.io/finalizer"
HANDLER_MODULES = (
    "kubetune.operator.handlers_finetunejob",
    "kubetune.operator.handlers_modeldeployment",
    "kubetune.operator.handlers_monitoring",
)


def load_handlers() -> list[str]:
    """Import the handler modules (they register with kopf); a missing one is only a notice."""
    loaded = []
    for module in HANDLER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise  # the module exists but one of its imports is broken
            log.info("handler module %s is not part of this build; its resources are not reconciled", module)
            continue
        loaded.append(module)
    return loaded


CHANGE_TRACKED_KINDS = frozenset({"ModelDeployment"})
"""Kinds with kopf create/update/resume handlers. FineTuneJobs and children are handled by
event handlers that decide level-based themselves, so kopf keeps no diff-base for them."""


class ChangeTrackedDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base, only for the kinds whose changes kopf detects for us.

    kopf builds the diff-base (a deep copy of the body, then of its essence) on every event
    of every watched kind, even kinds without change handlers. For them nothing reads it:
    returning None skips that work, about a fifth of the operator's CPU per FineTuneJob
    event when hundreds arrive at once (profiled). Bodies without a kind (never seen from a real API server) keep it.
    """

    def __init__(self, *, kinds: frozenset[str] = CHANGE_TRACKED_KINDS, **kwargs: Any):
        super().__init__(**kwargs)
        self.kinds = kinds

    def _untracked(self, body: Any) -> bool:
        kind = body.get("kind")
        return bool(kind) and kind not in self.kinds

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None if self._untracked(body) else super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: Any) -> Any:
        return None if self._untracked(body) else super().fetch(body=body)


def configure_kopf(kopf_settings: kopf.OperatorSettings) -> None:
    """kopf's bookkeeping goes to annotations, never to our strict status schema."""
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = ChangeTrackedDiffBase(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.posting.level = logging.WARNING
    # Server-side filters: kopf watches pods and Deployments only for the ModelDeployments'
    # children. Unfiltered, a cluster-wide watch streams every pod and Deployment of the
    # cluster to the operator and runs each through kopf (FineTuneJobs' children are
    # watched by child_watch, filtered the same way).
    kopf_settings.watching.label_selectors["", "v1", "pods"] = LABEL_MODELDEPLOYMENT
    kopf_settings.watching.label_selectors["apps", "v1", "deployments"] = LABEL_MODELDEPLOYMENT
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.watching.reconnect_backoff = 0.5
    kopf_settings.networking.error_backoffs = [0.5, 1, 2, 5, 10]
    kopf_settings.batching.idle_timeout = 60
    # On shutdown, a ModelDeployment resync already under way may finish (it patches status).
    kopf_settings.background.instant_exit_timeout = 5.0


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure_kopf(settings)


@kopf.on.cleanup()
async def _stop_api(memo: kopf.Memo, **_: Any) -> None:
    await events.drain()
    await memo.api.stop_workers()


@kopf.on.login()
def _login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same credentials as our KubeApi (in-cluster or KUBECONFIG)."""
    config = memo.api.api_client.configuration
    auth = config.get_api_key_with_prefix("authorization") or config.get_api_key_with_prefix("BearerToken")
    scheme, _, token = (auth or "").partition(" ")
    return kopf.ConnectionInfo(
        server=config.host,
        scheme=scheme or None if token else None,
        token=token or None,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        username=config.username or None,
        password=config.password or None,
        default_namespace=None,
    )


async def run_operator(
    settings: Settings,
    *,
    api: KubeApi | None = None,
    standalone: bool = True,
    liveness_endpoint: str | None = None,
    metrics_port: int | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """Run kopf with our handlers until stop_flag is set (or forever)."""
    load_handlers()
    api = api or KubeApi(threads=settings.api_threads)
    if metrics_port:
        start_metrics_server(metrics_port)
    memo = kopf.Memo(api=api, settings=settings, locks={}, reconciled={}, retries={}, workload_versions={})
    events.configure(api)
    try:
        await kopf.operator(
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            standalone=standalone,
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=memo,
        )
    finally:
        events.configure(None)
        api.close()
