"""One image naming scheme (kubetune/common/images.py) behind every image reference kubetune renders.

The chain a cluster runs is followed end to end: the chart renders the operator Deployment and its
KUBETUNE_*_IMAGE environment; the operator's settings read that environment; the operator's
renderers produce the RayJob, the batch Job, the serving Deployment (gateway sidecar, s3 fetch init
container), the monitor CronJob and the retraining FineTuneJob. Every container image on the way
must follow the scheme: a kubetune image of this release (by tag or digest) or the pinned vLLM image.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import kubetune
from kubetune.api import FineTuneJob
from kubetune.common import images
from kubetune.operator import render_serving as rs
from kubetune.operator.render_monitor import MonitorSettings, render_monitor
from kubetune.operator.render_training import render_workload
from kubetune.operator.settings import Settings, SettingsError
from tests.chart.chart_render import CHART, render_chart
from tests.monitoring.samples import modeldeployment
from tests.operator.samples import body, minimal_spec
from tests.operator_serving.test_render_serving import CASES as SERVING_CASES

REPO = Path(__file__).resolve().parents[2]
VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
DIGEST = "sha256:" + "ab" * 32


def container_images(obj) -> Iterator[str]:
    """Every `image` of a container or init container anywhere in a manifest (templates nest)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c["image"] for c in value if isinstance(c, dict) and "image" in c)
            yield from container_images(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from container_images(item)


def test_one_version_names_the_release():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert VERSION == pyproject == kubetune.__version__, "Chart appVersion, pyproject and the package disagree"


def test_chart_defaults_are_the_scheme():
    values = yaml.safe_load((CHART / "values.yaml").read_text())["images"]
    assert (values["registry"], values["prefix"]) == (images.REGISTRY, images.PREFIX)
    assert values["vllm"]["image"] == images.VLLM_IMAGE
    assert values["trainer"]["variant"] in images.TRAINER_VARIANTS


def test_operator_defaults_are_the_scheme():
    settings = Settings.from_env({})
    assert settings.trainer_image == f"ghcr.io/kubetune/trainer:{VERSION}"
    assert settings.gateway_image == f"ghcr.io/kubetune/gateway:{VERSION}"
    assert rs.ServingSettings().gateway_image == settings.gateway_image
    assert MonitorSettings().image == settings.trainer_image


def test_scheme_references():
    assert images.trainer_ref("0.1.0", "cpu") == "ghcr.io/kubetune/trainer:0.1.0-cpu"
    assert images.image_ref("gateway", "0.1.0", digest=DIGEST) == f"ghcr.io/kubetune/gateway@{DIGEST}"
    assert images.image_ref("operator", "0.2.0+g1234", registry="localhost:5000", prefix="") == \
        "localhost:5000/operator:0.2.0-g1234"
    with pytest.raises(ValueError, match="sha256"):
        images.image_ref("gateway", "0.1.0", digest="latest")
    assert images.follows_scheme(f"ghcr.io/kubetune/trainer@{DIGEST}", "0.1.0")
    for outside in ("ghcr.io/kubetune/trainer:0.0.9", "ghcr.io/kubetune/kubetune-trainer:0.1.0",
                    "kubetune/trainer:0.1.0", "ghcr.io/kubetune/trainer:0.1.0-tpu", "vllm/vllm-openai:latest"):
        assert not images.follows_scheme(outside, "0.1.0"), outside


@pytest.mark.parametrize("ref", ["ghcr.io/kubetune/trainer:0.1.0", f"registry.local:5000/a/b@{DIGEST}",
                                 f"vllm/vllm-openai:v0.11.0@{DIGEST}", "localhost/x", "[::1]:5000/x:y"])
def test_valid_references(ref):
    assert images.is_image_reference(ref)


@pytest.mark.parametrize("ref", ["", "ghcr.io/Kubetune/trainer:1", "a:b:c", "repo@sha256:abc", "a b", "repo:tag; rm -rf /",
                                 "https://ghcr.io/x", "repo:" + "t" * 129])
def test_invalid_references(ref):
    assert not images.is_image_reference(ref)


def test_a_bad_image_setting_is_refused_by_name():
    with pytest.raises(SettingsError, match="KUBETUNE_TRAINER_IMAGE"):
        Settings.from_env({"KUBETUNE_TRAINER_IMAGE": "trainer image"})


@pytest.mark.parametrize("field", ["resources", "engine"])
def test_specs_take_digests_and_refuse_garbage(field):
    from kubetune.api import parse_finetunejob, parse_modeldeployment

    pinned = f"registry.local/team/img@{DIGEST}"
    if field == "resources":
        doc = body(spec={**minimal_spec(), "resources": {"image": pinned}})
        assert parse_finetunejob(doc).spec.resources.image == pinned
        doc["spec"]["resources"]["image"] = "img:latest && curl evil"
        with pytest.raises(Exception, match="not an image reference"):
            parse_finetunejob(doc)
    else:
        doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
               "metadata": {"name": "m", "namespace": "ml"},
               "spec": {"model": {"uri": "pvc://models/x"}, "engine": {"image": pinned}}}
        assert parse_modeldeployment(doc).spec.engine.image == pinned
        doc["spec"]["engine"]["image"] = "vLLM:Latest:2"
        with pytest.raises(Exception, match="not an image reference"):
            parse_modeldeployment(doc)


def _operator_env(rendered) -> dict[str, str]:
    (deployment,) = rendered.of_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _operator_children(env: dict[str, str]) -> list[dict]:
    """What the operator renders with the environment the chart gave it."""
    settings = Settings.from_env(env)
    serving = rs.ServingSettings.from_env(env)
    objects: list[dict] = []
    for spec in (minimal_spec(), {**minimal_spec(), "engine": "Job",
                                  "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "2", "memory": "8Gi"}}):
        doc = body(spec=spec)
        objects.append(render_workload(doc, FineTuneJob.model_validate(doc), settings))
    for case in SERVING_CASES.values():
        inp = case()
        md = inp.md
        if md.spec.engine.image:  # a user's own vLLM image is theirs to name
            md = md.model_copy(update={"spec": md.spec.model_copy(
                update={"engine": md.spec.engine.model_copy(update={"image": None})})})
        keep = {k: getattr(inp.settings, k) for k in ("enable_keda", "s3_credentials_secret", "model_cache_claim",
                                                      "payload_log_claim", "monitor_kind")}
        objects += rs.render_all(dataclasses.replace(inp, md=md, settings=dataclasses.replace(serving, **keep)))
    monitor = dataclasses.replace(MonitorSettings.from_env(env), payload_log_claim="payload-logs")
    objects += render_monitor(modeldeployment(), monitor)
    return objects


@pytest.mark.parametrize("values_file", [None, *sorted((CHART / "ci").glob("*-values.yaml"))],
                         ids=lambda p: "defaults" if p is None else p.stem)
def test_every_rendered_image_follows_the_scheme(values_file):
    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    rendered = render_chart(values, label="scheme")
    chosen = {**yaml.safe_load((CHART / "values.yaml").read_text())["images"], **values.get("images", {})}
    scheme = {"registry": chosen["registry"], "prefix": chosen["prefix"],
              "external": (chosen.get("vllm", {}).get("image", images.VLLM_IMAGE),)}
    chart_images = list(container_images(rendered.objects))
    env = _operator_env(rendered)
    env_images = [env[k] for k in ("KUBETUNE_TRAINER_IMAGE", "KUBETUNE_GATEWAY_IMAGE", "KUBETUNE_VLLM_IMAGE")]
    children = _operator_children(env)
    child_images = list(container_images(children))
    kinds = {o["kind"] for o in children}
    assert {"RayJob", "Job", "Deployment", "CronJob"} <= kinds
    # the s3 case's fetch init container and the gateway sidecar are among them
    assert any(ref == env["KUBETUNE_GATEWAY_IMAGE"] for ref in child_images)
    assert len(child_images) > 10
    outside = [ref for ref in chart_images + env_images + child_images
               if not images.follows_scheme(ref, VERSION, **scheme)]
    assert not outside, f"images outside the scheme: {sorted(set(outside))}"


def test_golden_files_use_the_scheme_or_the_samples_own_images():
    """Golden files show what the operator renders; only images a sample spec names itself differ."""
    own = {"registry.example/kubetune/trainer:0.1.0", "registry.local/vllm:0.11"}
    seen = set()
    for path in sorted(REPO.glob("tests/**/golden/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            seen.update(container_images(doc))
    assert seen, "no golden file names an image"
    outside = sorted(ref for ref in seen if ref not in own and not images.follows_scheme(ref, VERSION))
    assert not outside, f"golden files name images outside the scheme: {outside}"


def test_dockerfile_targets_are_the_scheme_targets():
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    assert {t.target for t in images.TARGETS} <= stages
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    assert "ghcr.io" not in dockerfile, "the Dockerfile names no image: scripts/images.py does"


def test_images_script_lists_the_scheme():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "scripts" / "images.py"), "list", "--json"],
                         capture_output=True, text=True, check=True).stdout
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(i["target"], i["image"]) for i in listed] == \
        [(t.target, images.target_ref(t, VERSION)) for t in images.TARGETS]
