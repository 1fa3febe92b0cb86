"""`kubetune fetch`, as the serving init container runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KUBETUNE = [sys.executable, "-m", "kubetune"]


def test_fetches_a_pvc_directory_atomically(tmp_path: Path, monkeypatch):
    claim = tmp_path / "pvc" / "models" / "adapter"
    claim.mkdir(parents=True)
    (claim / "adapter_config.json").write_text("{}")
    (claim / "weights").mkdir()
    (claim / "weights" / "a.safetensors").write_bytes(b"\0" * 16)
    dest = tmp_path / "fetched" / "adapter"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from an earlier pod")
    env = {"KUBETUNE_PVC_ROOT": str(tmp_path / "pvc"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [*KUBETUNE, "fetch", "--to", str(dest), "pvc://models/adapter"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "fetched 2 file(s)" in result.stdout
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "adapter_config.json",
        "weights/a.safetensors",
    ]
    assert [p.name for p in dest.parent.iterdir()] == ["adapter"], "no temporary leftovers"


def test_missing_source_names_the_uri_and_keeps_the_destination(tmp_path: Path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")
    result = subprocess.run(
        [*KUBETUNE, "fetch", "--to", str(dest), str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "nope" in result.stderr and "does not exist" in result.stderr
    assert (dest / "keep.txt").exists()


def test_s3_without_s3fs_says_what_to_install(tmp_path: Path):
    """An image without s3fs (an import that fails, as when the package is absent)."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "s3fs.py").write_text("raise ImportError('No module named s3fs')\n")
    result = subprocess.run(
        [*KUBETUNE, "fetch", "--to", str(tmp_path / "d"), "s3://bucket/model"], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(blocker)},
    )
    assert result.returncode == 1
    assert "needs the s3fs package" in result.stderr and "Traceback" not in result.stderr


def test_s3_without_credentials_names_where_they_come_from(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    result = subprocess.run(
        [*KUBETUNE, "fetch", "--to", str(tmp_path / "d"), "s3://bucket/model"], capture_output=True, text=True, env=env,
    )
    assert result.returncode == 1
    assert "s3://bucket/model" in result.stderr and "KUBETUNE_S3_SECRET" in result.stderr
    assert "Traceback" not in result.stderr
