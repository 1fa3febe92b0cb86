"""`kubetune validate`, `crds` and `version` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

KUBETUNE = [sys.executable, "-m", "kubetune"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KUBETUNE, *args], capture_output=True, text=True, input=stdin)


GOOD = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: good}
spec:
  baseModel: {uri: pvc://models/base}
  datasets: [{name: d, uri: d.jsonl, format: chat}]
  output: {uri: out}
"""

BAD = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
---
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: bad}
spec:
  baseModel: {uri: pvc://models/base}
  datasets: [{name: d, uri: d.jsonl, format: chat}]
  method: {type: qlora, lora: {rank: 0}}
  hyperparameters: {scheduler: exponential}
  output: {uri: out}
  learningRate: 3
"""


def test_valid_file_exits_zero(tmp_path: Path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = run("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "FineTuneJob/good: valid" in result.stdout


def test_every_error_with_file_document_and_field(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = run("validate", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    prefix = f"{path}[1] (line 5) FineTuneJob/bad: "
    assert all(line.startswith(prefix) for line in lines), lines
    messages = sorted(line[len(prefix) :] for line in lines)
    assert any(m.startswith("spec.method.lora.rank:") for m in messages)
    assert any(m.startswith("spec.hyperparameters.scheduler:") and "'cosine'" in m and "'linear'" in m for m in messages)
    assert "spec.learningRate: unknown field" in messages
    assert "skipped kind 'ConfigMap'" in result.stdout


def test_cross_field_rules_are_reported_together(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD.replace("format: chat", "format: preference") + "  method: {type: qlora}\n")
    result = run("validate", str(path))
    assert result.returncode == 1
    assert "spec.baseModel.quantization: method qlora needs 4-bit loading" in result.stderr
    assert "spec.datasets: objectives dpo and orpo need datasets in format preference" in result.stderr


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text(GOOD + "  bad: [unclosed\n")
    result = run("validate", str(path))
    assert result.returncode == 1
    assert f"{path}:9:" in result.stderr and "invalid YAML" in result.stderr


def test_missing_file_and_stdin(tmp_path: Path):
    missing = run("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "nope.yaml: cannot read" in missing.stderr
    piped = run("validate", "-", stdin=GOOD)
    assert piped.returncode == 0 and "FineTuneJob/good: valid" in piped.stdout


def test_wrong_api_version_is_named(tmp_path: Path):
    path = tmp_path / "v.yaml"
    path.write_text(GOOD.replace("v1alpha1", "v1"))
    result = run("validate", str(path))
    assert result.returncode == 1 and "apiVersion: got 'kubetune.io/v1'" in result.stderr


def test_version():
    result = run("version")
    assert result.returncode == 0 and "API kubetune.io/v1alpha1" in result.stdout
