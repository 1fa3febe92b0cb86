"""Rendering is pure: golden files pin the manifests; schemas and invariants check them.

Regenerate the golden files after an intended change with
`KUBETUNE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/operator/test_render_training.py`
and review the diff.
"""

from __future__ import annotations

import copy
import os
import shlex
from pathlib import Path

import pytest
import yaml

from kubetune.api import FineTuneJob
from kubetune.operator.kuberay import SUPPORTED_KUBERAY_VERSIONS
from kubetune.operator.render_common import add_labels, child_name
from kubetune.operator.render_rbac import render_rbac
from kubetune.operator.render_training import (
    CONFIG_PATH,
    render_config_map,
    render_workload,
    workload_name,
)
from kubetune.operator.settings import Settings, SettingsError
from tests.harness.kuberay_schema import rayjob_errors, upstream_rayjob_errors
from tests.operator.samples import body, full_spec, minimal_spec

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings.from_env({})


def _render_all(doc: dict) -> list[dict]:
    job = FineTuneJob.model_validate(doc)
    return [*render_rbac(doc), render_config_map(doc, job), render_workload(doc, job, SETTINGS)]


CASES = {
    "rayjob-minimal": lambda: body(spec=minimal_spec()),
    "rayjob-full": lambda: body(spec=full_spec(), labels={"kueue.x-k8s.io/queue-name": "gpu-queue",
                                                          "kueue.x-k8s.io/priority-class": "high", "team": "support"}),
    "job-engine": lambda: body(name="single", spec={**minimal_spec(), "engine": "Job",
                                                     "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "2", "memory": "8Gi"}}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    rendered = yaml.safe_dump_all(_render_all(CASES[case]()), sort_keys=True)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1":
        path.write_text(rendered)
    assert path.exists(), f"{path} is missing: run with KUBETUNE_UPDATE_GOLDEN=1 to create it"
    assert rendered == path.read_text(), f"{path.name} differs: re-run with KUBETUNE_UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("case", sorted(CASES))
def test_core_kinds_validate_strict(case):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in _render_all(CASES[case]()):
        if obj["apiVersion"].startswith("ray.io"):
            continue
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


@pytest.mark.parametrize("version", SUPPORTED_KUBERAY_VERSIONS)
@pytest.mark.parametrize("case", ["rayjob-minimal", "rayjob-full"])
def test_rayjob_is_admitted_by_every_supported_kuberay(case, version):
    """kubetune's own schema per release always; KubeRay's generated CRD too where ../shared has it."""
    rayjob = _render_all(CASES[case]())[-1]
    assert rayjob["kind"] == "RayJob"
    assert rayjob_errors(rayjob, version) == []
    assert upstream_rayjob_errors(rayjob) in (None, [])


def test_the_schema_refuses_what_a_release_does_not_know():
    """A field newer than the oldest supported release, a typo and a bad pod fail the check."""
    rayjob = _render_all(CASES["rayjob-full"]())[-1]
    assert rayjob_errors({**rayjob, "spec": {**rayjob["spec"], "backoffLimit": 3}}, "1.1") == [
        "spec: Additional properties are not allowed ('backoffLimit' was unexpected)"]
    typo = {**rayjob, "spec": {**rayjob["spec"], "shutdownAfterJobFinish": True}}
    assert any("shutdownAfterJobFinish" in e for e in rayjob_errors(typo, SUPPORTED_KUBERAY_VERSIONS[0]))
    interactive = {**rayjob, "spec": {**rayjob["spec"], "submissionMode": "InteractiveMode"}}
    assert rayjob_errors(interactive, "1.2") and not rayjob_errors(interactive, "1.3")
    bad_pod = copy.deepcopy(rayjob)
    bad_pod["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    (error,) = rayjob_errors(bad_pod, SUPPORTED_KUBERAY_VERSIONS[-1])
    assert error.startswith("spec.rayClusterSpec.headGroupSpec.template:")


def test_rayjob_wiring():
    doc = body(spec=full_spec(), labels={"kueue.x-k8s.io/queue-name": "gpu-queue", "unrelated": "x"})
    rayjob = _render_all(doc)[-1]
    spec = rayjob["spec"]
    assert shlex.split(spec["entrypoint"]) == ["kubetune", "train", "--config", CONFIG_PATH]
    # Kueue admits a queued workload by unsuspending it, so it is created suspended.
    assert spec["suspend"] is True and spec["backoffLimit"] == 3 and spec["activeDeadlineSeconds"] == 7200
    assert _render_all(body(spec=full_spec()))[-1]["spec"]["suspend"] is False
    assert spec["shutdownAfterJobFinishes"] is True
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    pod = workers["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["priorityClassName"] == "training-high" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/datasets"]["readOnly"] is True
    assert mounts["/mnt/pvc/models"]["readOnly"] is False and mounts["/mnt/pvc/checkpoints"]["readOnly"] is False
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert env["KUBETUNE_JOB_NAME"]["value"] == "support-lora" and env["HF_HUB_OFFLINE"]["value"] == "1"
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "unrelated" not in rayjob["metadata"]["labels"]


def env_of(spec: dict, settings: Settings) -> dict:
    """The environment of the rendered RayJob's training workers."""
    doc = body(spec=spec)
    rayjob = render_workload(doc, FineTuneJob.model_validate(doc), settings)
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}


def test_gpu_speed_options_reach_gpu_training_pods_only():
    fast = Settings.from_env({"KUBETUNE_TRAINER_ATTENTION": "flex_attention", "KUBETUNE_TRAINER_COMPILE_BLOCKS": "true"})

    gpu = env_of(full_spec(), fast)
    assert gpu["KUBETUNE_ATTENTION"] == "flex_attention" and gpu["KUBETUNE_COMPILE_BLOCKS"] == "1"
    assert "KUBETUNE_ATTENTION" not in env_of(full_spec(), SETTINGS)  # defaults: nothing added
    cpu_job = {**minimal_spec(), "resources": {"workers": 2, "gpusPerWorker": 0}}
    assert "KUBETUNE_ATTENTION" not in env_of(cpu_job, fast)  # CPU jobs: not applicable
    with pytest.raises(SettingsError, match="KUBETUNE_TRAINER_ATTENTION"):
        Settings.from_env({"KUBETUNE_TRAINER_ATTENTION": "flash"})


def test_forward_token_budget_reaches_every_training_pod_when_set():
    cpu_job = {**minimal_spec(), "resources": {"workers": 2, "gpusPerWorker": 0}}
    assert "KUBETUNE_FORWARD_TOKENS" not in env_of(cpu_job, SETTINGS)  # auto: the trainer decides per device
    assert "KUBETUNE_FORWARD_TOKENS" not in env_of(
        cpu_job, Settings.from_env({"KUBETUNE_TRAINER_FORWARD_TOKENS": "auto"}))
    budget = Settings.from_env({"KUBETUNE_TRAINER_FORWARD_TOKENS": "512"})
    assert env_of(cpu_job, budget)["KUBETUNE_FORWARD_TOKENS"] == "512"
    assert env_of(full_spec(), budget)["KUBETUNE_FORWARD_TOKENS"] == "512"  # GPU jobs too
    assert Settings.from_env({"KUBETUNE_TRAINER_FORWARD_TOKENS": "0"}).trainer_forward_tokens == 0
    for bad in ("lots", "-1"):
        with pytest.raises(SettingsError, match="KUBETUNE_TRAINER_FORWARD_TOKENS"):
            Settings.from_env({"KUBETUNE_TRAINER_FORWARD_TOKENS": bad})


def test_every_child_is_owned_and_labelled():
    for obj in _render_all(body(spec=full_spec())):
        meta = obj["metadata"]
        (ref,) = meta["ownerReferences"]
        assert ref["kind"] == "FineTuneJob" and ref["controller"] is True and ref["blockOwnerDeletion"] is True
        assert meta["labels"]["app.kubernetes.io/part-of"] == "kubetune"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubetune-operator"
        assert meta["labels"]["kubetune.io/finetunejob"] == "support-lora"
        assert meta["namespace"] == "ml" and len(meta["name"]) <= 63


def test_extra_labels_reach_every_child_and_pod_template_without_overriding_ours():
    extra = {"team": "ml", "kubetune.io/finetunejob": "not-this"}  # settings refuse the second; keep ours anyway
    children = [add_labels(obj, extra) for obj in _render_all(body(spec=full_spec()))]
    rayjob = children[-1]
    templates = [rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"],
                 *(g["template"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]),
                 rayjob["spec"]["submitterPodTemplate"]]
    for meta in [c["metadata"] for c in children] + [t["metadata"] for t in templates]:
        assert meta["labels"]["team"] == "ml"
        assert meta["labels"]["kubetune.io/finetunejob"] == "support-lora"
    job = add_labels(_render_all(CASES["job-engine"]())[-1], extra)
    assert job["kind"] == "Job" and job["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert job["spec"]["template"]["metadata"]["labels"]["kubetune.io/finetunejob"] == "single"


def test_config_map_carries_the_deployments_max_lora_rank_only_when_known():
    doc = body(spec={**minimal_spec(), "deployTo": {"name": "support"}})
    job = FineTuneJob.model_validate(doc)
    manifest = yaml.safe_load(render_config_map(doc, job, max_lora_rank=8)["data"]["finetunejob.yaml"])
    assert manifest["metadata"]["annotations"] == {"kubetune.io/max-lora-rank": "8"}
    assert "annotations" not in yaml.safe_load(render_config_map(doc, job)["data"]["finetunejob.yaml"])["metadata"]


def test_user_strings_never_reach_the_entrypoint():
    nasty = body(name="x", spec={**minimal_spec(), "output": {"uri": "pvc://models/$(rm -rf /);echo"}})
    rayjob = _render_all(nasty)[-1]
    assert shlex.split(rayjob["spec"]["entrypoint"]) == ["kubetune", "train", "--config", CONFIG_PATH]


def test_config_map_holds_the_manifest_with_defaults():
    doc = body()
    cm = _render_all(doc)[3]
    manifest = yaml.safe_load(cm["data"]["finetunejob.yaml"])
    assert manifest["metadata"] == {"name": "support-lora", "namespace": "ml"}
    assert manifest["spec"]["method"]["type"] == "lora"  # default filled in
    assert FineTuneJob.model_validate(manifest).spec.hyperparameters.max_steps == 20


def test_rbac_is_least_privilege():
    sa, role, binding = render_rbac(body())
    (rule,) = role["rules"]
    assert rule == {"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"],
                    "resourceNames": ["support-lora"], "verbs": ["get", "patch"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ml"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_names_are_deterministic_and_bounded():
    long = "a" * 60 + "-job"
    assert workload_name(long) == workload_name(long) and len(workload_name(long)) <= 47
    assert workload_name(long) != workload_name("a" * 60 + "-jog")
    assert child_name("short", "config") == "short-config"
    assert len(child_name("b" * 63, "status-writer")) == 63


def test_suspend_and_job_engine():
    doc = body(spec={**minimal_spec(), "suspend": True})
    assert _render_all(doc)[-1]["spec"]["suspend"] is True
    job = _render_all(CASES["job-engine"]())[-1]
    assert job["kind"] == "Job" and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["kubetune", "train", "--config", CONFIG_PATH]
    assert "nvidia.com/gpu" not in job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def _containers(workload: dict) -> list[dict]:
    spec = workload["spec"]
    if workload["kind"] == "Job":
        templates = [spec["template"]]
    else:
        cluster = spec["rayClusterSpec"]
        templates = [spec["submitterPodTemplate"], cluster["headGroupSpec"]["template"],
                     *(g["template"] for g in cluster["workerGroupSpecs"])]
    return [(t["spec"], c) for t in templates for c in t["spec"]["containers"]]


@pytest.mark.parametrize("case", ["rayjob-full", "job-engine"])
def test_every_training_container_is_locked_down_and_shell_free(case):
    """Non-root, no capabilities, read-only root with /tmp (HOME) and /dev/shm as emptyDirs."""
    workload = _render_all(CASES[case]())[-1]
    pairs = _containers(workload)
    assert len(pairs) == (1 if case == "job-engine" else 3)
    for pod, container in pairs:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["allowPrivilegeEscalation"] is False and pod["securityContext"]["runAsNonRoot"] is True
        assert all(isinstance(container.get(key, []), list) for key in ("command", "args"))
        assert not {"sh", "bash", "/bin/sh", "/bin/bash"} & set(container.get("command", []))
        env = {e["name"]: e.get("value") for e in container["env"]}
        emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in emptydirs}
        assert {"/tmp", "/dev/shm", env["HOME"]} <= writable


def test_s3_jobs_get_the_credentials_secret_by_reference_and_the_endpoint():
    settings = Settings.from_env({"KUBETUNE_S3_SECRET": "s3-credentials",
                                  "KUBETUNE_S3_ENDPOINT_URL": "http://minio.storage.svc:9000"})
    doc = body(spec={**minimal_spec(), "output": {"uri": "s3://artifacts/support-lora"}})
    rayjob = render_workload(doc, FineTuneJob.model_validate(doc), settings)
    spec = rayjob["spec"]
    pods = [spec["rayClusterSpec"]["headGroupSpec"]["template"], spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
            spec["submitterPodTemplate"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.storage.svc:9000"
        assert not any(k.startswith("AWS_SECRET") for k in env)
    doc = body(spec=minimal_spec())  # pvc:// only: no S3 access at all
    (container,) = render_workload(doc, FineTuneJob.model_validate(doc), settings)["spec"]["rayClusterSpec"][
        "workerGroupSpecs"][0]["template"]["spec"]["containers"]
    assert "envFrom" not in container and "AWS_ENDPOINT_URL_S3" not in {e["name"] for e in container["env"]}


@pytest.mark.parametrize(("name", "value"), [("KUBETUNE_S3_SECRET", "Not_A_Name"),
                                             ("KUBETUNE_S3_ENDPOINT_URL", "minio:9000")])
def test_bad_s3_settings_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
