"""Render the chart for the defaults and each ci/*-values.yaml; lint it; validate every object.

Core kinds are validated with kubernetes-validate in strict mode (unknown fields fail) for the
oldest and newest Kubernetes the chart supports; prometheus-operator kinds with their typed
models (cloudcoil) and, where ../shared/schemas has them, their CRD schemas with jsonschema.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from tests.chart.chart_render import CHART, CI_VALUES, NAMESPACE, RELEASE, REPO
from tests.harness.crd_models import model_errors
from tests.harness.schema_tools import closed_schema

SHARED_PROMETHEUS_OPERATOR = REPO.parent / "shared" / "schemas" / "prometheus-operator"

KUBE_VERSIONS = ["1.30.0", "1.37.0"]
PROMETHEUS_OPERATOR_KINDS = {
    "ServiceMonitor": "crd-servicemonitors.yaml",
    "PodMonitor": "crd-podmonitors.yaml",
    "PrometheusRule": "crd-prometheusrules.yaml",
}


def _crd_schema(path, kind):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == kind:
            version = next(v for v in doc["spec"]["versions"] if v.get("storage"))
            return version["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{path} has no CRD for {kind}")


def test_lint_has_no_warnings_or_errors(values_file):
    helm = pytest.importorskip("helm_python")
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


def test_renders_the_operator_and_its_identity(rendered):
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Deployment", "Service"} <= kinds
    assert "ServiceAccount" in kinds or rendered.values.get("serviceAccount", {}).get("create") is False
    for obj in rendered.objects:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        namespaced = obj["kind"] not in ("ClusterRole", "ClusterRoleBinding")
        assert ("namespace" in obj["metadata"]) == namespaced, f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubetune"


def test_object_names_are_unique(rendered):
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in rendered.objects]
    assert len(keys) == len(set(keys)), sorted(keys)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_core_objects_validate_strictly(rendered, kube_version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    core = [o for o in rendered.objects if o["kind"] not in PROMETHEUS_OPERATOR_KINDS]
    assert core
    for obj in core:
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - the failure message
            pytest.fail(f"{rendered.label}: {obj['kind']}/{obj['metadata']['name']} invalid for {kube_version}: {exc}")


def test_prometheus_operator_objects_validate(rendered):
    """Typed prometheus-operator models always; its CRDs in ../shared as an extra check."""
    objects = [o for o in rendered.objects if o["kind"] in PROMETHEUS_OPERATOR_KINDS]
    for obj in objects:
        assert model_errors(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
        path = SHARED_PROMETHEUS_OPERATOR / PROMETHEUS_OPERATOR_KINDS[obj["kind"]]
        if not path.exists():
            continue
        body = {k: v for k, v in obj.items() if k != "metadata"}
        errors = sorted(jsonschema.Draft7Validator(closed_schema(_crd_schema(path, obj["kind"]))).iter_errors(body), key=str)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_prometheus_operator_objects_only_when_enabled(default_render, integrations_render):
    assert not [o for o in default_render.objects if o["kind"] in PROMETHEUS_OPERATOR_KINDS]
    kinds = {o["kind"] for o in integrations_render.objects}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds


def test_service_monitor_scrapes_the_metrics_service(integrations_render):
    (monitor,) = integrations_render.of_kind("ServiceMonitor")
    (service,) = integrations_render.of_kind("Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The operator's series carry the ModelDeployment's namespace; the scrape must keep it.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    (deployment,) = integrations_render.of_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_prometheus_rule_carries_the_monitoring_rules(integrations_render):
    rules_file = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    (rule,) = integrations_render.of_kind("PrometheusRule")
    assert rule["spec"]["groups"] == rules_file["groups"]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts, "no alert rules rendered"
    for alert in alerts:
        assert alert["expr"] and alert.get("labels", {}).get("severity"), alert["alert"]


def test_dashboards_are_configmaps_for_the_grafana_sidecar(rendered):
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    maps = [o for o in rendered.of_kind("ConfigMap") if "-dashboard-" in o["metadata"]["name"]]
    assert len(maps) == len(files)
    wanted_ns = rendered.values.get("grafanaDashboards", {}).get("namespace") or NAMESPACE
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == wanted_ns
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / key).read_text())


def _env(rendered):
    (deployment,) = rendered.of_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container, {e["name"]: e.get("value") for e in container["env"]}


def test_operator_settings_reach_the_container(integrations_render):
    container, env = _env(integrations_render)
    assert env["KUBETUNE_ENABLE_KEDA"] == "true"
    assert env["KUBETUNE_KEDA_PROMETHEUS"] == "http://prometheus.monitoring.svc:9090"
    assert env["KUBETUNE_PROMETHEUS_MONITOR"] == "true"
    assert env["KUBETUNE_NAMESPACES"] == ""
    assert env["KUBETUNE_LOG_LEVEL"] == "debug"
    assert env["KUBETUNE_S3_SECRET"] == "s3-credentials"
    assert env["KUBETUNE_S3_ENDPOINT_URL"] == "http://minio.storage.svc:9000"
    assert container["image"] == "registry.example.com:5000/platform/kubetune/operator@sha256:" + "0123456789abcdef" * 4
    assert env["KUBETUNE_TRAINER_IMAGE"] == "registry.example.com:5000/platform/kubetune/trainer:0.1.0-cpu"
    assert env["KUBETUNE_GATEWAY_IMAGE"] == "registry.example.com:5000/platform/kubetune/gateway@sha256:" + "fedcba9876543210" * 4
    assert env["KUBETUNE_VLLM_IMAGE"] == "vllm/vllm-openai@sha256:" + "00112233445566778899aabbccddeeff" * 2
    assert container["args"] == ["operator", "--standalone", "--liveness",
                                 "http://0.0.0.0:8080/healthz", "--metrics-port", "9090"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}


def test_default_render_keeps_optional_integrations_off(default_render):
    _, env = _env(default_render)
    assert env["KUBETUNE_ENABLE_KEDA"] == "false"
    assert env["KUBETUNE_PROMETHEUS_MONITOR"] == "false"
    assert "KUBETUNE_KEDA_PROMETHEUS" not in env


def test_child_labels_reach_the_operator_settings(integrations_render, default_render):
    """operator.childLabels becomes KUBETUNE_EXTRA_LABELS, parsed by the operator's own settings."""
    from kubetune.operator.settings import Settings

    _, env = _env(integrations_render)
    settings = Settings.from_env({"KUBETUNE_EXTRA_LABELS": env["KUBETUNE_EXTRA_LABELS"]})
    assert settings.extra_labels == {"team": "ml-platform", "example.com/cost-centre": "4711"}
    assert "KUBETUNE_EXTRA_LABELS" not in _env(default_render)[1]


def test_every_setting_the_chart_passes_is_read_by_the_operator(rendered):
    """A renamed variable in kubetune.operator would otherwise be ignored silently."""
    sources = "".join(p.read_text() for p in (REPO / "operator").glob("*.py"))
    if "KUBETUNE_NAMESPACES" not in sources:
        pytest.skip("the operator's settings module has not landed")
    _, env = _env(rendered)
    extra = {e["name"] for e in (rendered.values.get("operator", {}).get("extraEnv") or [])}
    unread = [name for name in env if name.startswith("KUBETUNE_") and name not in extra and f'"{name}"' not in sources]
    assert not unread, f"the operator reads none of {unread}"


def test_operator_command_accepts_the_chart_args(default_render):
    """The Deployment's args (after the image's `kubetune` entrypoint) parse with the real parser."""
    from kubetune.cli import build_parser

    container, _ = _env(default_render)
    assert "command" not in container  # the image's ENTRYPOINT is `kubetune` (tests/images)
    try:
        args = build_parser().parse_args(container["args"])
    except SystemExit:  # pragma: no cover - the failure message
        pytest.fail(f"kubetune rejects the chart's args {container['args']}")
    if getattr(args, "func", None).__name__ == "run" and "placeholder" in getattr(args.func, "__qualname__", ""):
        pytest.skip("the operator command has not landed")
    assert args.command == "operator"


def test_namespaced_mode_passes_the_namespaces(namespaced_render):
    _, env = _env(namespaced_render)
    assert env["KUBETUNE_NAMESPACES"] == "team-a,team-b"


def test_notes_tell_how_to_upgrade_crds(default_render):
    assert "kubectl apply --server-side -f charts/kubetune/crds/" in default_render.notes
    assert f"deployment/{RELEASE}-kubetune" in default_render.notes


def test_ci_values_files_exist():
    names = {p.name for p in CI_VALUES}
    assert {"namespaced-values.yaml", "all-integrations-values.yaml"} <= names
