"""Rendering a ModelDeployment into its children: golden files, schema validity, invariants.

Golden files live in golden/; regenerate after a deliberate change with
`KUBETUNE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/operator_serving/test_render_serving.py`
and review the diff.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.api import parse_modeldeployment
from kubetune.operator import render_serving as rs
from kubetune.operator.vllm_args import EngineArgsError, LoraModule, vllm_args

from tests.harness.crd_models import model_errors

from .schemas import CORE_VERSION, crd_schema, validate_custom

GOLDEN = Path(__file__).parent / "golden"
PROMETHEUS_OPERATOR_SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "prometheus-operator"
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}


def make_md(spec: dict[str, Any], name: str = "chat", namespace: str = "ml") -> Any:
    return parse_modeldeployment(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace, "uid": "0d9a7c1e-uid"},
            "spec": spec,
        }
    )


def case_adapter_on_pvc() -> rs.RenderInput:
    """A FineTuneJob's adapter over its base, autoscaled (HPA), with keys, GPUs and a canary."""
    md = make_md(
        {
            "model": {"fineTuneJobRef": {"name": "support-ft"}},
            "adapters": [{"name": "tone", "uri": "pvc://artifacts/tone/adapter"}],
            "engine": {"maxModelLen": 4096, "dtype": "bfloat16", "extraArgs": ["--enforce-eager"]},
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetWaitingRequests": 2.5},
            "resources": {
                "gpus": 1,
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "rollout": {"strategy": "Canary", "canaryWeight": 20},
            "gateway": {"authSecretRef": {"name": "chat-keys", "key": "keys.txt"}},
        }
    )
    model = rs.ResolvedModel(
        uri="pvc://models/llama-3-8b",
        served_name="chat-base",
        adapter=LoraModule("chat", "pvc://artifacts/support-ft/adapter"),
        digest="sha256:1111",
    )
    return rs.RenderInput(
        md=md,
        model=model,
        adapter_uris=["pvc://artifacts/tone/adapter", "pvc://artifacts/tone-v2/adapter"],
        canary_routes=[rs.CanaryRoute("tone", "tone-canary", 20)],
    )


def case_hub_model_servicemonitor() -> rs.RenderInput:
    """A hub-style name from the model cache PVC, one replica, ServiceMonitor, logs on a PVC."""
    md = make_md({"model": {"uri": "acme/chat-7b"}, "resources": {"gpus": 2}, "engine": {"tensorParallelSize": 2}})
    settings = rs.ServingSettings(
        model_cache_claim="model-cache", payload_log_claim="payload-logs", monitor_kind="ServiceMonitor"
    )
    return rs.RenderInput(md=md, model=rs.ResolvedModel(uri="acme/chat-7b", served_name="chat"), settings=settings)


def case_s3_keda() -> rs.RenderInput:
    """Merged weights on s3 (fetched by an init container), KEDA instead of the HPA, 3 replicas."""
    md = make_md(
        {
            "model": {"uri": "s3://models/chat/merged"},
            "replicas": 3,
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
            "engine": {"image": "registry.local/vllm:0.11"},
            "gateway": {"logging": {"sampleRate": 1.0, "redactPii": False}, "safety": {"scorer": "none", "action": "log"}},
        },
        name="summarizer",
    )
    settings = rs.ServingSettings(enable_keda=True, s3_credentials_secret="s3-creds")
    return rs.RenderInput(
        md=md, model=rs.ResolvedModel(uri="s3://models/chat/merged", served_name="summarizer"), settings=settings
    )


CASES = {
    "adapter_on_pvc": case_adapter_on_pvc,
    "hub_model_servicemonitor": case_hub_model_servicemonitor,
    "s3_keda": case_s3_keda,
}


@pytest.fixture(params=sorted(CASES))
def rendered(request) -> tuple[str, rs.RenderInput, list[dict[str, Any]]]:
    inp = CASES[request.param]()
    return request.param, inp, rs.render_all(inp)


def test_matches_golden(rendered):
    name, _, children = rendered
    text = yaml.safe_dump_all(children, sort_keys=False, default_flow_style=False)
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with KUBETUNE_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"rendering of {name} changed; review and regenerate {path}"


def test_core_children_pass_strict_validation(rendered):
    _, _, children = rendered
    core = [c for c in children if c["kind"] in CORE_KINDS]
    assert {c["kind"] for c in core} >= {"Deployment", "Service", "ConfigMap"}
    for child in core:
        kubernetes_validate.validate(copy.deepcopy(child), CORE_VERSION, strict=True)


def test_prometheus_monitors_are_valid(rendered):
    """Typed prometheus-operator models always; its CRDs in ../shared as an extra check."""
    _, _, children = rendered
    monitors = [c for c in children if c["apiVersion"] == "monitoring.coreos.com/v1"]
    assert len(monitors) == 1
    monitor = monitors[0]
    assert model_errors(monitor) == []
    file = {"PodMonitor": "crd-podmonitors.yaml", "ServiceMonitor": "crd-servicemonitors.yaml"}[monitor["kind"]]
    path = PROMETHEUS_OPERATOR_SCHEMAS / file
    if path.exists():
        assert validate_custom(monitor, crd_schema(path, monitor["kind"], "v1")) == []


def test_monitor_checks_catch_a_typo_and_a_wrong_type():
    """The checks can fail: a misspelt endpoint field and a string where a list goes are reported."""
    monitor = rs.render_monitor(case_adapter_on_pvc())
    monitor["spec"]["podMetricsEndpoints"][0]["paht"] = "/metrics"
    assert model_errors(monitor) == ["spec.podMetricsEndpoints[0].paht: unknown field"]
    path = PROMETHEUS_OPERATOR_SCHEMAS / "crd-podmonitors.yaml"
    if path.exists():
        assert any("paht" in e for e in validate_custom(monitor, crd_schema(path, "PodMonitor", "v1")))
    monitor = rs.render_monitor(case_adapter_on_pvc())
    monitor["spec"]["podMetricsEndpoints"] = "metrics"
    assert model_errors(monitor) and "podMetricsEndpoints" in model_errors(monitor)[0]


def test_keda_scaled_object():
    children = rs.render_all(case_s3_keda())
    kinds = [c["kind"] for c in children]
    assert "ScaledObject" in kinds and "HorizontalPodAutoscaler" not in kinds
    scaled = next(c for c in children if c["kind"] == "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert 'namespace="ml"' in trigger["metadata"]["query"] and "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    assert all(isinstance(v, str) for v in trigger["metadata"].values())
    assert model_errors(scaled) == []
    scaled["spec"]["minReplicaCount"] = "one"
    assert model_errors(scaled) == ["spec.minReplicaCount: Input should be a valid integer, unable to parse string as an integer"]


def test_every_child_is_labelled_owned_and_deterministic(rendered):
    _, inp, children = rendered
    again = rs.render_all(inp)
    assert children == again
    md_name = inp.md.metadata["name"]
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"]["app.kubernetes.io/instance"] == md_name
        assert meta["labels"]["app.kubernetes.io/part-of"] == "kubetune"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubetune-operator"
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "name": md_name,
            "uid": "0d9a7c1e-uid", "controller": True, "blockOwnerDeletion": True,
        }
    assert len({(c["kind"], c["metadata"]["name"]) for c in children}) == len(children)


def _deployment(inp: rs.RenderInput) -> dict[str, Any]:
    return rs.render_deployment(inp)


def _container(deploy: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_vllm_container_runs_the_server_with_list_args_and_runtime_lora():
    deploy = _deployment(case_adapter_on_pvc())
    vllm = _container(deploy, "vllm")
    assert vllm["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = vllm["args"]
    assert all(isinstance(a, str) for a in args)
    assert args[args.index("--model") + 1] == "/mnt/pvc/models/llama-3-8b"
    assert args[args.index("--lora-modules") + 1] == "chat=/mnt/pvc/artifacts/support-ft/adapter"
    assert "--enable-lora" in args and args[-1] == "--enforce-eager"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    mounts = {m["mountPath"]: m for m in vllm["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"] and mounts["/mnt/pvc/artifacts"]["readOnly"]
    assert "/dev/shm" in mounts
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_pods_are_non_root_and_locked_down():
    for make in CASES.values():
        pod = _deployment(make())["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]


def test_gateway_sidecar_gets_keys_by_reference_and_its_settings():
    deploy = _deployment(case_adapter_on_pvc())
    gateway = _container(deploy, "gateway")
    args = gateway["args"]
    assert args[:4] == ["serve", "--gateway-only", "--upstream", "http://127.0.0.1:8000"]
    assert args[args.index("--api-keys-file") + 1] == "/etc/kubetune/keys/keys.txt"
    assert args[args.index("--sample-rate") + 1] == "0.1"
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"] == {"secretName": "chat-keys", "items": [{"key": "keys.txt", "path": "keys.txt"}]}
    assert not any("chat-keys" in str(e) for e in gateway["env"])  # never an env copy of the secret
    assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_gateway_workers_share_the_port_and_each_gets_a_cpu():
    one = _container(_deployment(case_hub_model_servicemonitor()), "gateway")
    assert "--workers" not in one["args"]
    assert one["resources"]["requests"] == {"cpu": "250m", "memory": "384Mi"}
    md = make_md({"model": {"uri": "acme/chat-7b"}, "gateway": {"workers": 3}})
    inp = rs.RenderInput(md=md, model=rs.ResolvedModel(uri="acme/chat-7b", served_name="chat"))
    three = _container(_deployment(inp), "gateway")
    assert three["args"][three["args"].index("--workers") + 1] == "3"
    assert three["resources"] == {"requests": {"cpu": "3", "memory": "896Mi"}, "limits": {"memory": "2048Mi"}}
    with pytest.raises(Exception, match="spec.gateway.workers"):
        make_md({"model": {"uri": "acme/chat-7b"}, "gateway": {"workers": 0}})


def test_s3_sources_are_fetched_by_an_init_container_without_a_shell():
    deploy = _deployment(case_s3_keda())
    pod = deploy["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["command"] == ["kubetune"]
    dest = fetch["args"][2]
    assert fetch["args"] == ["fetch", "--to", dest, "s3://models/chat/merged"]
    assert dest.startswith("/mnt/fetched/models-chat-merged-")
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    vllm = _container(deploy, "vllm")
    assert vllm["args"][vllm["args"].index("--model") + 1] == dest
    settings = rs.ServingSettings()
    assert rs.pod_path("s3://a/b-c", settings) != rs.pod_path("s3://a-b/c", settings)
    assert vllm["image"] == "registry.local/vllm:0.11"


def test_autoscaling_leaves_replicas_to_the_autoscaler_and_adds_a_pdb():
    inp = case_adapter_on_pvc()
    children = {c["kind"]: c for c in rs.render_all(inp)}
    assert "replicas" not in children["Deployment"]["spec"]
    hpa = children["HorizontalPodAutoscaler"]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    assert hpa["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "2500m"}
    assert hpa["scaleTargetRef"]["name"] == children["Deployment"]["metadata"]["name"]
    assert children["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_single_replica_has_no_pdb_or_autoscaler():
    kinds = [c["kind"] for c in rs.render_all(case_hub_model_servicemonitor())]
    assert "PodDisruptionBudget" not in kinds and "HorizontalPodAutoscaler" not in kinds


def test_service_exposes_the_gateway_and_vllm_only_for_a_servicemonitor():
    pod_monitor = rs.render_service(case_adapter_on_pvc())
    assert [p["name"] for p in pod_monitor["spec"]["ports"]] == ["http"]
    service_monitor = rs.render_service(case_hub_model_servicemonitor())
    assert [p["name"] for p in service_monitor["spec"]["ports"]] == ["http", "vllm-metrics"]
    assert rs.endpoint("chat", "ml") == "http://chat.ml.svc:8080/v1"


def test_gateway_config_carries_the_canary_split():
    cm = rs.render_gateway_config(case_adapter_on_pvc())
    config = yaml.safe_load(cm["data"]["canary.json"])
    assert config == {"version": 1, "routes": [{"model": "tone", "canary": "tone-canary", "weight": 20}]}


def test_base_model_change_rolls_pods_but_adapters_on_mounted_storage_do_not():
    inp = case_adapter_on_pvc()
    template = _deployment(inp)["spec"]["template"]
    same_claim = rs.RenderInput(md=inp.md, model=inp.model, adapter_uris=["pvc://artifacts/other/adapter"])
    assert _deployment(same_claim)["spec"]["template"] == template
    new_base = rs.RenderInput(
        md=inp.md, model=rs.ResolvedModel(**{**inp.model.__dict__, "uri": "pvc://models/llama-3.1-8b"}),
        adapter_uris=inp.adapter_uris,
    )
    assert _deployment(new_base)["spec"]["template"] != template
    new_digest = rs.RenderInput(
        md=inp.md, model=rs.ResolvedModel(**{**inp.model.__dict__, "digest": "sha256:2222"}), adapter_uris=inp.adapter_uris
    )
    assert _deployment(new_digest)["spec"]["template"] != template


def test_long_names_stay_valid_dns_labels():
    long_name = "a" * 70 + ".b"
    for child in rs.names(long_name).values():
        assert len(child) <= 63 and child[0].isalpha()
    assert rs.names(long_name) == rs.names(long_name)
    assert rs.names(long_name)["service"] != rs.names("a" * 70 + ".c")["service"]


def test_extra_args_cannot_override_managed_flags():
    md = make_md({"model": {"uri": "acme/m"}, "engine": {"extraArgs": ["--enforce-eager", "--port=9999"]}})
    with pytest.raises(EngineArgsError) as err:
        vllm_args(model_path="/m", served_model_name="m", engine=md.spec.engine)
    assert err.value.field == "spec.engine.extraArgs[1]" and "--port" in str(err.value)


def test_vllm_args_cover_every_engine_setting():
    md = make_md({"model": {"uri": "acme/m"}, "engine": {
        "maxModelLen": 2048, "tensorParallelSize": 2, "gpuMemoryUtilization": 0.85, "maxLoras": 8,
        "maxLoraRank": 64, "dtype": "float16"}, "resources": {"gpus": 2}})
    args = vllm_args(model_path="/m", served_model_name="m", engine=md.spec.engine,
                     lora_modules=[LoraModule("a", "/a"), LoraModule("b", "/b")])
    pairs = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert pairs["--max-model-len"] == "2048" and pairs["--tensor-parallel-size"] == "2"
    assert pairs["--gpu-memory-utilization"] == "0.85" and pairs["--max-loras"] == "8"
    assert pairs["--max-lora-rank"] == "64" and pairs["--dtype"] == "float16"
    assert args[args.index("--lora-modules") + 1 : args.index("--lora-modules") + 3] == ["a=/a", "b=/b"]


def test_settings_from_env_and_bad_values():
    settings = rs.ServingSettings.from_env(
        {"KUBETUNE_VLLM_IMAGE": "v:1", "KUBETUNE_ENABLE_KEDA": "true", "KUBETUNE_SERVING_STARTUP_SECONDS": "2400"}
    )
    assert settings.vllm_image == "v:1" and settings.enable_keda and settings.startup_timeout_seconds == 2400
    with pytest.raises(ValueError, match="KUBETUNE_SERVING_STARTUP_SECONDS"):
        rs.ServingSettings.from_env({"KUBETUNE_SERVING_STARTUP_SECONDS": "soon"})
    with pytest.raises(ValueError, match="PodMonitor or ServiceMonitor"):
        rs.ServingSettings.from_env({"KUBETUNE_SERVING_MONITOR_KIND": "Probe"})


def test_engine_api_is_keyed_so_only_the_gateway_and_operator_reach_it():
    inp = case_adapter_on_pvc()
    deploy = _deployment(inp)
    vllm, gateway = _container(deploy, "vllm"), _container(deploy, "gateway")
    key_env = next(e for e in vllm["env"] if e["name"] == "VLLM_API_KEY")
    assert key_env["valueFrom"] == {"secretKeyRef": {"name": "chat-engine-key", "key": "key"}}
    assert gateway["args"][gateway["args"].index("--upstream-api-key-file") + 1] == "/etc/kubetune/engine-key/key"
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"  # outside /v1: no key needed
    secret = rs.render_engine_key(inp.md, "s3cr3t")
    assert secret["data"] == {"key": "czNjcjN0"} and secret["metadata"]["ownerReferences"][0]["name"] == "chat"
    kubernetes_validate.validate(secret, CORE_VERSION, strict=True)
