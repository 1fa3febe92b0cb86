"""Alert rules and dashboards as Kubernetes objects for the chart (pure apart from reading our files).

The rules stay plain Prometheus rule files in monitoring/rules/ (so `promtool check rules` and
`promtool test rules` run on them as they are); the chart ships them as a prometheus-operator
`PrometheusRule`, and the dashboards as ConfigMaps that Grafana's sidecar picks up by the
`grafana_dashboard` label.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES_DIR = HERE / "rules"
DASHBOARDS_DIR = HERE / "dashboards"


def rule_files() -> list[Path]:
    return sorted(p for p in RULES_DIR.glob("*.y*ml") if p.is_file())


def rule_groups() -> list[dict[str, Any]]:
    """Every group of every rule file, in file order; a file without `groups` is an error."""
    groups: list[dict[str, Any]] = []
    for path in rule_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(doc.get("groups"), list):
            raise ValueError(f"{path}: not a Prometheus rule file (no top-level `groups` list)")
        groups.extend(doc["groups"])
    return groups


def prometheus_rule_object(name: str, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A monitoring.coreos.com/v1 PrometheusRule holding all our alert rules."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "kubetune", **(labels or {})},
        },
        "spec": {"groups": rule_groups()},
    }


def dashboards() -> dict[str, dict[str, Any]]:
    """Grafana dashboards by file name."""
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def dashboard_configmaps(namespace: str, prefix: str = "kubetune") -> list[dict[str, Any]]:
    """One ConfigMap per dashboard, labelled for Grafana's dashboard sidecar."""
    out = []
    for filename in sorted(DASHBOARDS_DIR.glob("*.json")):
        stem = filename.stem.lower().replace("_", "-").replace(".", "-")
        out.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"{prefix}-dashboard-{stem}"[:63].rstrip("-"),
                "namespace": namespace,
                "labels": {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "kubetune"},
            },
            "data": {filename.name: filename.read_text(encoding="utf-8")},
        })
    return out
