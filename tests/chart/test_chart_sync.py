"""The chart's copies of the CRDs, dashboards and alert rules match their sources."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tests.chart.chart_render import CHART, REPO


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_chart", REPO / "scripts" / "sync_chart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_copies_are_up_to_date():
    problems = _sync_module().stale()
    assert not problems, "chart copies are stale; run `python scripts/sync_chart.py`:\n" + "\n".join(problems)


def test_chart_crds_are_byte_identical_to_the_generated_ones():
    sources = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sources and sources == sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    for name in sources:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/kubetune/crds/{name} differs: run `python scripts/sync_chart.py`"
        )


def test_sync_detects_and_repairs_drift(tmp_path):
    """On a scratch copy: an edited CRD, a removed dashboard source and a missing file."""
    sync = _sync_module()
    repo = tmp_path / "repo"
    for folder in ("crds", "monitoring", "deploy"):
        if (REPO / folder).exists():
            shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (repo / "monitoring" / "dashboards").mkdir(parents=True, exist_ok=True)
    (repo / "monitoring" / "dashboards" / "extra.json").write_text('{"title": "extra"}\n')
    chart = repo / "charts" / "kubetune"
    shutil.copytree(CHART, chart)
    (chart / "files" / "dashboards").mkdir(parents=True, exist_ok=True)
    (chart / "files" / "dashboards" / "gone.json").write_text("{}\n")
    crd = sorted((chart / "crds").glob("*.yaml"))[0]
    crd.write_text(crd.read_text() + "# edited by hand\n")

    problems = sync.stale(repo)
    assert any(crd.name in p and "differs" in p for p in problems)
    assert any("extra.json" in p and "missing" in p for p in problems)
    assert any("gone.json" in p and "no source" in p for p in problems)

    sync.sync(repo)
    assert sync.stale(repo) == []
    assert crd.read_bytes() == (repo / "crds" / crd.name).read_bytes()
    assert not (chart / "files" / "dashboards" / "gone.json").exists()


def test_check_mode_exits_nonzero_with_the_fix(capsys, monkeypatch):
    sync = _sync_module()
    monkeypatch.setattr(sync, "stale", lambda: ["charts/kubetune/crds/x.yaml: differs from its source"])
    assert sync.main(["--check"]) == 1
    assert "python scripts/sync_chart.py" in capsys.readouterr().err
