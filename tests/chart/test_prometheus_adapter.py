"""The prometheus-adapter rule the chart ships: it serves exactly the metric the operator's
HPAs ask for, and its query is valid PromQL that sums vLLM's queue per pod (real promtool)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from kubetune.monitoring.vllm_metrics import exported_names
from kubetune.operator.render_serving import ServingSettings
from tests.chart.chart_render import CHART, RELEASE

RULES = CHART / "files" / "prometheus-adapter-rules.yaml"


def _adapter_config_maps(rendered):
    return [o for o in rendered.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-prometheus-adapter-rules")]


def test_off_by_default_and_rendered_where_the_adapter_runs(default_render, integrations_render):
    assert _adapter_config_maps(default_render) == []
    (config_map,) = _adapter_config_maps(integrations_render)
    assert config_map["metadata"] == {**config_map["metadata"], "name": f"{RELEASE}-kubetune-prometheus-adapter-rules",
                                      "namespace": "monitoring"}
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == yaml.safe_load(RULES.read_text())


def test_the_rule_serves_the_metric_the_hpas_scale_on():
    (rule,) = yaml.safe_load(RULES.read_text())["rules"]
    assert rule["name"]["as"] == ServingSettings().hpa_metric_name
    series = rule["seriesQuery"].split("{")[0].strip("'")
    assert series in exported_names()
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def _expanded(query: str) -> str:
    """The query as prometheus-adapter sends it for `kubectl get --raw .../pods/*/<metric>`."""
    return (query.replace("<<.Series>>", "vllm:num_requests_waiting")
                 .replace("<<.LabelMatchers>>", 'namespace="ml",pod=~"chat-a|chat-b"')
                 .replace("<<.GroupBy>>", "pod"))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool absent (apt-get install prometheus; CI has it)")
def test_the_query_sums_the_queue_of_each_pod_over_its_models(tmp_path):
    (rule,) = yaml.safe_load(RULES.read_text())["rules"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
        {"record": "adapter:answer", "expr": _expanded(rule["metricsQuery"])}]}]}))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'vllm:num_requests_waiting{namespace="ml",pod="chat-a",model_name="base"}', "values": "2x3"},
                {"series": 'vllm:num_requests_waiting{namespace="ml",pod="chat-a",model_name="tone"}', "values": "3x3"},
                {"series": 'vllm:num_requests_waiting{namespace="ml",pod="chat-b",model_name="base"}', "values": "1x3"},
                {"series": 'vllm:num_requests_waiting{namespace="other",pod="chat-a",model_name="base"}', "values": "9x3"},
            ],
            "promql_expr_test": [{"expr": "adapter:answer", "eval_time": "2m", "exp_samples": [
                {"labels": 'adapter:answer{pod="chat-a"}', "value": 5},
                {"labels": 'adapter:answer{pod="chat-b"}', "value": 1},
            ]}],
        }],
    }))
    proc = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
