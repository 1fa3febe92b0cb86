"""values.yaml is documented line by line and values.schema.json rejects what is wrong."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.chart.chart_render import CHART

KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")


def test_every_value_is_documented():
    """Every key has a comment right above it, or sits inside a documented map/list value."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    documented_parents: list[tuple[int, bool]] = []  # (indent, documented)
    previous = ""
    for number, line in enumerate(lines, 1):
        match = KEY.match(line)
        if not match or line.lstrip().startswith(("#", "-")):
            if line.strip():
                previous = line
            continue
        indent = len(match["indent"])
        while documented_parents and documented_parents[-1][0] >= indent:
            documented_parents.pop()
        commented = previous.lstrip().startswith("#")
        inherited = any(doc for _, doc in documented_parents)
        leaf = match["rest"].strip() != ""
        if leaf and not (commented or inherited):
            undocumented.append(f"values.yaml:{number}: {match['key']}")
        documented_parents.append((indent, commented or inherited))
        previous = line
    assert not undocumented, "document these values with a comment:\n" + "\n".join(undocumented)


def test_schema_is_strict_and_accepts_the_defaults_and_ci_values():
    helm = pytest.importorskip("helm_python")
    chart = helm.Chart.load(str(CHART))
    schema = chart.schema
    assert schema["additionalProperties"] is False
    chart.validate_schema({})
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        chart.validate_schema(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"operator": {"replicas": 3}}, "/operator/replicas"),
        ({"operator": {"watch": {"mode": "everywhere"}}}, "/operator/watch/mode"),
        ({"operator": {"watch": {"mode": "namespaced", "namespaces": []}}}, "/operator/watch/namespaces"),
        ({"operator": {"watch": {"mode": "namespaced", "namespaces": ["Team_A"]}}}, "/operator/watch/namespaces/0"),
        ({"images": {"pullPolicy": "Sometimes"}}, "/images/pullPolicy"),
        ({"images": {"operator": {"digest": "latest"}}}, "/images/operator/digest"),
        ({"images": {"trainer": {"variant": "tpu"}}}, "/images/trainer/variant"),
        ({"images": {"vllm": {"image": "vllm/vllm-openai:v0.11.0 --evil"}}}, "/images/vllm/image"),
        ({"images": {"registry": "https://ghcr.io"}}, "/images/registry"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
        ({"integrations": {"keda": {"enabled": "yes"}}}, "/integrations/keda/enabled"),
        ({"integrations": {"istio": {"enabled": True}}}, "istio"),
        ({"operatr": {}}, "operatr"),
        ({"operator": {"childLabels": {"team": "ml platform"}}}, "/operator/childLabels"),
        # helm names a bad key, not its path
        ({"operator": {"childLabels": {"cost centre": "4711"}}}, "invalid propertyName 'cost centre'"),
        ({"operator": {"childLabels": {"kubetune.io/finetunejob": "x"}}}, "invalid propertyName 'kubetune.io/finetunejob'"),
        ({"operator": {"childLabels": {"job-name": "x"}}}, "invalid propertyName 'job-name'"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(values, complaint):
    helm = pytest.importorskip("helm_python")
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmValuesError) as excinfo:
        chart.validate_schema(values)
    assert complaint in str(excinfo.value)


def test_lint_reports_a_bad_value_as_an_error():
    helm = pytest.importorskip("helm_python")
    report = helm.lint(str(CHART), {"operator": {"replicas": 2}}, strict=True)
    assert any("/operator/replicas" in m["error"] and m["severity"] == 3 for m in report["messages"])
