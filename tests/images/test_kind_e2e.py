"""`make kind-e2e` (scripts/kind_e2e.py) needs docker with a daemon and kind, which these machines
lack; its plan is pure, so the commands it would run and the manifests it would apply are checked
here: the images it loads are the scheme's, the chart it installs asks for exactly those, and the
job and storage manifests are valid."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kubetune.api import parse_finetunejob
from kubetune.common import images
from kubetune.operator.kuberay import SUPPORTED_KUBERAY_VERSIONS
from tests.chart.chart_render import render_chart

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kind_e2e():
    spec = importlib.util.spec_from_file_location("kind_e2e", REPO / "scripts" / "kind_e2e.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _set_values(argv: list[str]) -> dict:
    values: dict = {}
    for flag, assignment in zip(argv, argv[1:]):
        if flag == "--set":
            key, _, value = assignment.partition("=")
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return values


def test_the_plan_loads_the_scheme_images_the_chart_asks_for(kind_e2e):
    steps = kind_e2e.plan(kind_e2e.Options())
    assert all(isinstance(s.argv, list) and all(isinstance(a, str) for a in s.argv) for s in steps)
    loaded = [s.argv[3] for s in steps if s.argv[:3] == ["kind", "load", "docker-image"]]
    version = images.default_version()
    assert sorted(loaded) == sorted(images.target_ref(images.target(t), version) for t in kind_e2e.TARGETS)
    build = next(s for s in steps if s.what == "images")
    assert build.argv[build.argv.index("--targets") + 1:] == list(kind_e2e.TARGETS)
    install = next(s for s in steps if s.argv[:3] == ["helm", "upgrade", "--install"] and "kubetune" in s.argv)
    rendered = render_chart(_set_values(install.argv))
    (deployment,) = rendered.of_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    pods_images = {container["image"], env["KUBETUNE_TRAINER_IMAGE"], env["KUBETUNE_GATEWAY_IMAGE"]}
    assert pods_images == set(loaded), "the chart would pull an image kind-e2e did not load"
    order = [s.what for s in steps]
    assert order.index("KubeRay") < order.index("kubetune") < order.index("FineTuneJob") < order.index("training succeeds")


def test_the_manifests_it_applies_are_valid(kind_e2e, tmp_path):
    import kubernetes_validate
    import yaml

    opts = kind_e2e.Options(out=tmp_path)
    kind_e2e.write_inputs(opts, kind_e2e.scheme_images())
    for doc in yaml.safe_load_all((tmp_path / "storage.yaml").read_text()):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    job = parse_finetunejob(yaml.safe_load((tmp_path / "finetunejob.json").read_text()))
    assert job.spec.resources.gpus_per_worker == 0
    assert job.spec.base_model.uri.startswith("pvc://kubetune-models/")


def test_without_docker_and_kind_it_says_what_is_missing(kind_e2e, monkeypatch, capsys):
    monkeypatch.setattr(kind_e2e.shutil, "which", lambda tool: None)
    assert kind_e2e.main([]) == 2
    assert "kind is not installed" in capsys.readouterr().err


def test_kind_e2e_installs_a_supported_kuberay(kind_e2e):
    minor = ".".join(kind_e2e.KUBERAY_CHART_VERSION.split(".")[:2])
    assert minor in SUPPORTED_KUBERAY_VERSIONS
