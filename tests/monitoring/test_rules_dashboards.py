"""Alert rules (promtool), the PrometheusRule object, dashboards, and every metric name they query."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from kubetune.monitoring import prometheus_rules as pr
from kubetune.monitoring.vllm_metrics import exported_names
from tests.harness.crd_models import model_errors

SHARED = Path(__file__).resolve().parents[3] / "shared"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool absent (apt-get install prometheus; CI has it)")

# Words in PromQL that are not metric names.
_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "delta", "irate", "histogram_quantile",
    "le", "offset", "bool", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "topk", "bottomk",
    "label_values", "min_over_time", "max_over_time", "avg_over_time", "vector", "abs", "clamp_min", "inf", "nan",
}
_NAME = re.compile(r"(?<![\w:$.\"'{=~])([a-zA-Z_:][a-zA-Z0-9_:]*)(?=\s*(?:\{|\[|\)|$|\s|>|<|/|\*|\+|-|,))")


def metric_names(expr: str) -> set[str]:
    """Metric names of a PromQL expression (label matchers, strings, durations and keywords removed)."""
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\"[^\"]*\"", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"\bby\s*\([^)]*\)|\bwithout\s*\([^)]*\)", "", expr)
    names = set()
    for token in _NAME.findall(expr):
        if token.lower() in _PROMQL_WORDS or re.fullmatch(r"\d+(\.\d+)?", token):
            continue
        names.add(token)
    return names


def queried_names() -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    for group in pr.rule_groups():
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                where.setdefault(name, set()).add(f"rule {rule.get('alert') or rule.get('record')}")
    for filename, dash in pr.dashboards().items():
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                for name in metric_names(target["expr"]):
                    where.setdefault(name, set()).add(f"{filename}: {panel['title']}")
        for var in dash.get("templating", {}).get("list", []):
            query = var.get("query")
            if isinstance(query, dict) and "label_values" in query.get("query", ""):
                inner = query["query"].split("(", 1)[1].split(",", 1)[0].split("{", 1)[0]
                where.setdefault(inner.strip(), set()).add(f"{filename}: variable {var['name']}")
    return where


def our_names(repo_root: Path) -> set[str]:
    """Names our code registers, plus those docs/contracts.md promises, with series suffixes."""
    text = (repo_root / "docs" / "contracts.md").read_text()
    base = set(re.findall(r"`(kubetune_[a-z_]+)", text))
    for folder in ("operator", "serving", "trainer_image", "monitoring", "kubetune"):
        for path in (repo_root / folder).rglob("*.py"):
            base |= set(re.findall(r"[\"'](kubetune_[a-z_]+)[\"']", path.read_text(encoding="utf-8")))
    return base | {f"{n}{s}" for n in base for s in ("_bucket", "_sum", "_count")}


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, model) (rate(x_bucket{a="b"}[5m]))) > 2') == {"x_bucket"}
    assert metric_names("max by (model_name) (vllm:kv_cache_usage_perc) > 0.95") == {"vllm:kv_cache_usage_perc"}
    assert metric_names("sum(rate(a_total[5m])) / sum(rate(b_total[5m]))") == {"a_total", "b_total"}


def test_every_queried_metric_is_exported_by_us_or_documented_by_vllm(repo_root):
    known = our_names(repo_root) | exported_names()
    where = queried_names()
    assert len(where) >= 20
    unknown = {name: sorted(places) for name, places in where.items() if name not in known}
    assert unknown == {}, f"queried but neither exported by kubetune nor documented by vLLM: {unknown}"
    # The panels are all there.
    for needed in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_bucket",
                   "kubetune_gateway_ttft_seconds_bucket", "kubetune_drift_share", "kubetune_finetunejobs",
                   "kubetune_train_loss", "kubetune_retraining_jobs_total"):
        assert needed in where, needed


def test_dashboards_are_grafana_json_with_unique_panel_ids():
    boards = pr.dashboards()
    assert set(boards) == {"kubetune-training.json", "kubetune-serving.json", "kubetune-quality.json"}
    for name, board in boards.items():
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36, name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), (name, panel["title"])


def test_dashboard_configmaps_carry_the_sidecar_label():
    maps = pr.dashboard_configmaps("monitoring")
    assert len(maps) == 3
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key, value), = cm["data"].items()
        assert json.loads(value)["uid"].startswith("kubetune-")


def test_prometheus_rule_object_matches_the_rule_files_and_its_crd():
    """Typed prometheus-operator model always; its CRD in ../shared as an extra check."""
    obj = pr.prometheus_rule_object("kubetune", "monitoring")
    alerts = {r["alert"] for g in obj["spec"]["groups"] for r in g["rules"]}
    assert {"KubetuneDriftPersistent", "KubetuneSafetySpike", "KubetuneTTFTP99High", "KubetuneQueueLong",
            "KubetuneKVCacheFull", "KubetuneFineTuneJobFailed"} <= alerts
    assert model_errors(obj) == []
    crd_path = SHARED / "schemas" / "prometheus-operator" / "crd-prometheusrules.yaml"
    if not crd_path.exists():
        return
    crd = next(d for d in yaml.safe_load_all(crd_path.read_text()) if d)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _python_patterns(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator(schema).validate(obj)


def _python_patterns(node):
    """Go's RE2 allows `^(?i)...`; Python's re does not: such patterns are dropped, the rest kept."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "pattern" and isinstance(v, str):
                try:
                    re.compile(v)
                except re.error:
                    continue
            out[k] = _python_patterns(v)
        return out
    if isinstance(node, list):
        return [_python_patterns(v) for v in node]
    return node


@needs_promtool
def test_promtool_check_rules():
    proc = subprocess.run([PROMTOOL, "check", "rules", *map(str, pr.rule_files())], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


@needs_promtool
def test_promtool_test_rules():
    tests = sorted((pr.RULES_DIR / "tests").glob("*.yaml"))
    assert tests
    proc = subprocess.run([PROMTOOL, "test", "rules", *map(str, tests)], capture_output=True, text=True,
                          cwd=pr.RULES_DIR / "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_promtool_test():
    alerts = {r["alert"] for g in pr.rule_groups() for r in g["rules"] if "alert" in r}
    tested = set()
    for path in (pr.RULES_DIR / "tests").glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", [])}
    assert alerts - tested == set()
