"""Chart rendering helpers: render charts/kubetune offline with helm-python-sdk (Helm v4's Go engine
through its C ABI; no helm binary, no cluster)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "kt"
NAMESPACE = "kubetune-system"


@dataclass(frozen=True)
class Rendered:
    """One rendering of the chart: the values used and every object it produced."""

    label: str
    values: dict
    objects: list[dict]
    notes: str

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]


def render_chart(values: dict | None = None, *, label: str = "custom") -> Rendered:
    helm = pytest.importorskip("helm_python")
    wants_rules = (values or {}).get("integrations", {}).get("prometheusOperator", {}).get("enabled") and (
        (values or {}).get("prometheusRule", {}).get("enabled", True)
    )
    if wants_rules and not yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())["groups"]:
        pytest.skip("the monitoring alert rules have not landed yet (files/prometheus-rules.yaml has no "
                    "groups): run `python scripts/sync_chart.py` once monitoring/rules exists")
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects, notes = [], ""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert isinstance(doc, dict), f"{template}: a document is not a mapping"
                objects.append(doc)
    return Rendered(label, values or {}, objects, notes)


def load_values(path: Path | None) -> dict:
    return yaml.safe_load(path.read_text()) if path else {}
