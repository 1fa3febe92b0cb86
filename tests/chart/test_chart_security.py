"""Security by default: a locked-down operator pod and least-privilege RBAC in every mode."""

from __future__ import annotations

import pytest

from tests.chart.chart_render import NAMESPACE, render_chart

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
DANGEROUS_VERBS = {"bind", "escalate", "impersonate", "*"}


def _rules(rendered, kinds=("ClusterRole", "Role")):
    return [(o, r) for o in rendered.objects if o["kind"] in kinds for r in o["rules"]]


def _grants(rendered, group, resource, kinds=("ClusterRole", "Role")):
    verbs = set()
    for _, rule in _rules(rendered, kinds):
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


def test_pod_runs_locked_down(rendered):
    (deployment,) = rendered.of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "add" not in ctx["capabilities"]
        assert ctx.get("privileged") is False
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
        assert container["resources"]["requests"] and container["resources"]["limits"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] == "/healthz"
            port = container[probe]["httpGet"]["port"]
            assert port in {p["name"] for p in container["ports"]}
        # A read-only root needs a writable /tmp.
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


def test_rbac_has_no_wildcards_secret_listing_or_escalation(rendered):
    rules = _rules(rendered)
    assert rules
    for role, rule in rules:
        where = f"{role['kind']}/{role['metadata']['name']}"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"{where}: wildcard in {field}"
        if "secrets" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "create"}, (
                f"{where}: Secrets only get/create (the engine key); list/watch would expose them all")
        assert not DANGEROUS_VERBS & set(rule["verbs"]), f"{where}: {rule}"
        assert not rule.get("nonResourceURLs"), where


def test_operator_can_do_its_job(default_render):
    """The operator's duties, each mapped to the permission it needs."""
    need = {
        ("kubetune.io", "finetunejobs"): {"get", "list", "watch", "patch", "create"},
        ("kubetune.io", "finetunejobs/status"): {"get", "patch"},
        ("kubetune.io", "modeldeployments/status"): {"get", "patch"},
        ("ray.io", "rayjobs"): {"create", "watch", "delete"},
        ("", "configmaps"): {"create", "patch"},
        ("", "serviceaccounts"): {"create"},
        ("rbac.authorization.k8s.io", "roles"): {"create"},
        ("rbac.authorization.k8s.io", "rolebindings"): {"create"},
        ("apps", "deployments"): {"create", "patch", "watch"},
        ("", "services"): {"create"},
        ("autoscaling", "horizontalpodautoscalers"): {"create"},
        ("policy", "poddisruptionbudgets"): {"create"},
        ("batch", "jobs"): {"create", "watch"},
        ("batch", "cronjobs"): {"create"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "events"): {"create"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list"},
    }
    for (group, resource), verbs in need.items():
        assert verbs <= _grants(default_render, group, resource), (group, resource)


def test_read_only_where_the_operator_only_observes(default_render):
    assert not WRITE_VERBS & _grants(default_render, "", "pods")
    assert not WRITE_VERBS & _grants(default_render, "", "persistentvolumeclaims")
    assert not WRITE_VERBS & _grants(default_render, "ray.io", "rayclusters")
    assert not WRITE_VERBS & _grants(default_render, "apiextensions.k8s.io", "customresourcedefinitions")
    assert "delete" not in _grants(default_render, "kubetune.io", "finetunejobs")


def _operator_granted_rules():
    """The rules of every Role the operator renders for its jobs, from its own renderers."""
    render_rbac = pytest.importorskip("kubetune.operator.render_rbac")
    render_monitor = pytest.importorskip("kubetune.operator.render_monitor")
    meta = {"name": "demo", "namespace": "ml", "uid": "0000", "generation": 1}
    job = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": meta, "spec": {}}
    deployment = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": meta, "spec": {}}
    objects = render_rbac.render_rbac(job) + render_monitor.render_rbac(deployment)
    return [rule for obj in objects if obj["kind"] == "Role" for rule in obj["rules"]]


@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_per_job_roles_need_no_bind_or_escalate(default_render, namespaced_render, mode):
    """The Roles the operator creates for training pods and the monitor job grant only
    permissions the operator holds itself, so Kubernetes' RBAC escalation check lets it create
    them without `bind` or `escalate` (docs/real-cluster.md, "Permissions")."""
    rendered = default_render if mode == "cluster" else namespaced_render
    rules = _operator_granted_rules()
    assert rules
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert set(rule["verbs"]) <= _grants(rendered, group, resource), (
                    f"the operator grants {rule['verbs']} on {group}/{resource} but does not hold them")


def test_integrations_add_only_their_own_permissions(default_render, integrations_render):
    assert not _grants(default_render, "keda.sh", "scaledobjects")
    assert not _grants(default_render, "monitoring.coreos.com", "servicemonitors")
    assert not _grants(default_render, "kueue.x-k8s.io", "workloads")
    assert {"create", "delete"} <= _grants(integrations_render, "keda.sh", "scaledobjects")
    assert {"create"} <= _grants(integrations_render, "monitoring.coreos.com", "servicemonitors")
    assert _grants(integrations_render, "kueue.x-k8s.io", "workloads") == {"get", "list", "watch"}


def test_without_kuberay_no_rayjob_permissions():
    rendered = render_chart({"integrations": {"kuberay": {"enabled": False}}})
    assert not _grants(rendered, "ray.io", "rayjobs")
    assert not _grants(rendered, "ray.io", "rayclusters")


def test_namespaced_mode_grants_nothing_cluster_wide(namespaced_render):
    assert not namespaced_render.of_kind("ClusterRole")
    assert not namespaced_render.of_kind("ClusterRoleBinding")
    roles = namespaced_render.of_kind("Role")
    bindings = namespaced_render.of_kind("RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for binding in bindings:
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] in {r["metadata"]["name"] for r in roles}


def test_cluster_mode_binds_the_service_account(default_render):
    (sa,) = default_render.of_kind("ServiceAccount")
    for binding in default_render.of_kind("ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    (deployment,) = default_render.of_kind("Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_existing_service_account_must_be_named():
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmRenderError, match="serviceAccount.name is required"):
        render_chart({"serviceAccount": {"create": False}})


def test_every_kind_the_operator_manages_is_granted(integrations_render):
    """kubetune.operator.k8s.KINDS is the operator's list of kinds it talks to: each needs a rule."""
    k8s = pytest.importorskip("kubetune.operator.k8s")
    missing = []
    for kind, resource in k8s.KINDS.items():
        group = resource.api_version.rpartition("/")[0] if "/" in resource.api_version else ""
        if not _grants(integrations_render, group, resource.plural):
            missing.append(f"{kind} ({group or 'core'}/{resource.plural})")
    assert not missing, f"the chart grants nothing on {missing}"
