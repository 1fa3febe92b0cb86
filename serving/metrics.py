"""The gateway's Prometheus metrics, named as in docs/contracts.md.

Each gateway owns its registry, so several gateways can live in one process (tests, the
benchmark) without clashing, and /metrics shows exactly this gateway's series.

With `--workers N` the supervisor sets PROMETHEUS_MULTIPROC_DIR (a private folder it owns):
prometheus_client then keeps every worker's values in files there, and /metrics on any worker
shows the sum over all of them (counters and histograms summed, the canary weight as the one
most recently set by a live worker), so a scrape does not depend on which worker answers it.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class ModelSeries(NamedTuple):
    """One model's labelled children, looked up once rather than on every request."""

    duration: object
    ttft: object
    itl: object
    tokens_in: object
    tokens_out: object


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kubetune_gateway_requests_total", "Requests by served model, adapter and HTTP status.",
            ["model", "adapter", "status"], registry=r,
        )
        self.duration = Histogram(
            "kubetune_gateway_request_duration_seconds", "Request latency, first byte in to last byte out.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "kubetune_gateway_ttft_seconds", "Time to the first streamed chunk (whole answer when not streaming), "
            "by base model and served adapter (\"\" for the base).", ["model", "adapter"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            "kubetune_gateway_itl_seconds", "Mean inter-token latency of a streamed answer: the time from its first "
            "to its last streamed event over (completion tokens - 1); answers of one token are not observed.",
            ["model", "adapter"], buckets=ITL_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "kubetune_gateway_tokens_total", "Tokens in (prompt) and out (completion).",
            ["model", "direction"], registry=r,
        )
        self.safety_flags = Counter(
            "kubetune_gateway_safety_flags_total", "Responses flagged by the safety scorer, by category.",
            ["model", "category"], registry=r,
        )
        self.safety_scored = Counter(
            "kubetune_gateway_safety_scored_total", "Responses scored by the safety scorer, flagged or not "
            "(flagged / all is a model's flag ratio; canary analysis compares it).",
            ["model", "adapter", "flagged"], registry=r,
        )
        self.feedback = Counter(
            "kubetune_gateway_feedback_total", "Client ratings (/v1/feedback) by the served model that gave the "
            "answer; rating is -1, 0 or 1.", ["model", "adapter", "rating"], registry=r,
        )
        self.canary_weight = Gauge(
            "kubetune_gateway_canary_weight", "Percent of an adapter's traffic sent to its canary version.",
            ["adapter"], registry=r, multiprocess_mode="livemostrecent",
        )
        self._canary_adapters: set[str] = set()
        self.key_requests = Counter(
            "kubetune_gateway_key_requests_total", "Requests admitted past the rate limits, by API key "
            "(the first 8 bytes of its SHA-256, hex; \"anonymous\" without auth).", ["key"], registry=r,
        )
        self.rate_limited = Counter(
            "kubetune_gateway_rate_limited_total", "Requests answered 429 by a key's limit (requests or tokens).",
            ["key", "limit"], registry=r,
        )
        self.overloaded = Counter(
            "kubetune_gateway_overload_rejections_total", "Requests refused because the gateway's queue was full "
            "or the wait for a slot timed out.", ["reason"], registry=r,
        )
        self.queue_depth = Gauge(
            "kubetune_gateway_queue_depth", "Requests waiting for an upstream slot.", registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            "kubetune_gateway_inflight_requests", "Requests being answered by the upstream engine.", registry=r,
            multiprocess_mode="livesum",
        )

        self._per_model: dict[tuple[str, str], ModelSeries] = {}
        self._request_counters: dict[tuple[str, str, int], object] = {}

    def for_model(self, model: str, adapter: str = "") -> ModelSeries:
        series = self._per_model.get((model, adapter))
        if series is None:
            series = self._per_model[(model, adapter)] = ModelSeries(
                self.duration.labels(model=model), self.ttft.labels(model=model, adapter=adapter),
                self.itl.labels(model=model, adapter=adapter),
                self.tokens.labels(model=model, direction="in"), self.tokens.labels(model=model, direction="out"))
        return series

    def request_counter(self, model: str, adapter: str, status: int):
        key = (model, adapter, status)
        child = self._request_counters.get(key)
        if child is None:
            child = self._request_counters[key] = self.requests.labels(model=model, adapter=adapter,
                                                                      status=str(status))
        return child

    def set_canary_weight(self, adapter: str, weight: float) -> None:
        self.canary_weight.labels(adapter=adapter).set(weight)
        self._canary_adapters.add(adapter)

    def clear_canary_weights(self, keep) -> None:
        """Drop the series of routes that are gone (across workers: their weight becomes 0)."""
        if self.multiprocess_dir is None:
            self.canary_weight.clear()
        else:  # the value files outlive a cleared child; a 0 there is what the others see
            for adapter in self._canary_adapters - set(keep):
                self.canary_weight.labels(adapter=adapter).set(0)
        self._canary_adapters &= set(keep)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)
