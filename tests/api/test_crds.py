"""The generated CRDs: current, valid for the API server, structural, and self-documenting."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from kubetune.api import crdgen

KUBETUNE = [sys.executable, "-m", "kubetune"]


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module", params=sorted(crdgen.RESOURCES))
def crd(request) -> dict[str, Any]:
    return crdgen.build_crd(request.param)


def test_committed_crds_are_current():
    assert crdgen.stale() == [], "run `kubetune crds generate` and commit crds/*.yaml"


def test_crds_check_fails_on_a_stale_file(tmp_path: Path):
    for path in crdgen.generate(tmp_path):
        assert path.exists()
    ok = subprocess.run([*KUBETUNE, "crds", "check", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "finetunejobs.yaml"
    stale.write_text(stale.read_text().replace("Optimizer steps done", "steps"))
    bad = subprocess.run([*KUBETUNE, "crds", "check", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "finetunejobs.yaml" in bad.stderr and "kubetune crds generate" in bad.stderr
    (tmp_path / "modeldeployments.yaml").unlink()
    missing = subprocess.run([*KUBETUNE, "crds", "check", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert "modeldeployments.yaml" in missing.stderr


def test_generate_writes_what_check_accepts(tmp_path: Path):
    out = subprocess.run([*KUBETUNE, "crds", "generate", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetunejobs.yaml", "modeldeployments.yaml"]
    assert crdgen.stale(tmp_path) == []


def test_crds_pass_kubernetes_validate_strict(repo_root: Path, tmp_path: Path):
    exe = Path(sys.executable).parent / "kubernetes-validate"
    if not exe.exists():
        exe = shutil.which("kubernetes-validate")
    files = [str(repo_root / "crds" / f"{p}.yaml") for p in crdgen.RESOURCES]
    result = subprocess.run([str(exe), "--strict", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 2


def test_schema_is_structural(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(schema):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert "title" not in node, path
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path}: properties and additionalProperties"
        has_type = "type" in node or node.get("x-kubernetes-int-or-string")
        assert has_type, f"{path}: every node needs a type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"
        if node.get("type") == "array":
            assert "items" in node, path


def test_every_field_is_described(crd):
    """`kubectl explain` shows these: a field without a description is a defect."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    undocumented = [p for p, n in _nodes(schema) if p and not p.endswith(("[]", "{}")) and not n.get("description")]
    assert undocumented == []


def test_cel_rules_are_bounded(crd):
    """The API server estimates CEL cost from maxItems/maxLength; unbounded lists fail admission."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(schema):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: lists need maxItems"


@pytest.mark.parametrize(
    "plural, short, columns",
    [
        ("finetunejobs", "ftj", ["Phase", "Method", "Progress", "Loss", "Age"]),
        ("modeldeployments", "mdep", ["Phase", "Ready", "Endpoint", "Drift", "Age"]),
    ],
)
def test_names_columns_and_subresources(plural, short, columns):
    crd = crdgen.build_crd(plural)
    names = crd["spec"]["names"]
    assert names["shortNames"] == [short]
    assert names["categories"] == ["kubetune"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    shown = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == columns


def test_enums_defaults_and_minimums_reach_the_schema():
    spec = crdgen.build_crd("finetunejobs")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    method = spec["properties"]["method"]["properties"]
    assert method["type"]["enum"] == ["full", "freeze", "lora", "qlora", "dora", "hft"]
    assert method["type"]["default"] == "lora"
    lora = method["lora"]["properties"]
    assert lora["rank"]["minimum"] == 1 and lora["rank"]["default"] == 16
    lr = spec["properties"]["hyperparameters"]["properties"]["learningRate"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True
    assert spec["properties"]["resources"]["properties"]["cpu"]["x-kubernetes-int-or-string"] is True
    assert spec["properties"]["datasets"]["x-kubernetes-list-map-keys"] == ["name"]
    assert spec["required"] == ["baseModel", "datasets", "output"]


def test_crd_files_parse_as_single_documents(repo_root: Path):
    for plural in crdgen.RESOURCES:
        docs = list(yaml.safe_load_all((repo_root / "crds" / f"{plural}.yaml").read_text()))
        assert len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition"
