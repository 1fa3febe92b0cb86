#!/usr/bin/env python3
"""`make kind-e2e`: kubetune from zero on a kind cluster, as docs/real-cluster.md describes it.

Builds the images with docker, loads them into a kind cluster, installs KubeRay and the chart
(CPU trainer variant: kind has no GPUs), puts the quickstart's data and model on PVCs, applies the
quickstart FineTuneJob with the CPU resources kind has, and waits for it to succeed.

    scripts/kind_e2e.py             # run every step (needs docker with a daemon, kind, helm, kubectl)
    scripts/kind_e2e.py --dry-run   # print the commands only

Every step is an argv list, never a shell string. Standard library only; the quickstart's model
and data are made with the repository's venv (`make venv`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KUBERAY_CHART_VERSION = "1.5.1"
"""The KubeRay release this path is run against (docs/real-cluster.md lists the supported ones)."""
TARGETS = ("operator", "gateway", "trainer-cpu")
NAMESPACE = "kubetune-system"
JOB = "quickstart-catalogue"


@dataclass(frozen=True)
class Step:
    what: str
    argv: list[str]
    stdin_file: str | None = None
    check: bool = True


@dataclass(frozen=True)
class Options:
    cluster: str = "kubetune"
    namespace: str = "default"
    venv: Path = ROOT / ".venv"
    out: Path = ROOT / "out" / "kind-e2e"
    images: dict[str, str] = field(default_factory=dict)
    timeout_minutes: int = 60


def scheme_images() -> dict[str, str]:
    """The references of TARGETS, from scripts/images.py's own loading of the naming scheme."""
    spec = importlib.util.spec_from_file_location("kubetune_images_script", ROOT / "scripts" / "images.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    scheme, version = script.load_scheme(), script.project_version()
    return {t: scheme.target_ref(scheme.target(t), version) for t in TARGETS}


STORAGE = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: kubetune-data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: kubetune-models}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 4Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: kubetune-loader}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}
  containers:
    - name: loader
      image: IMAGE
      imagePullPolicy: IfNotPresent
      command: [sleep, infinity]
      volumeMounts:
        - {name: data, mountPath: /data}
        - {name: models, mountPath: /models}
  volumes:
    - {name: data, persistentVolumeClaim: {claimName: kubetune-data}}
    - {name: models, persistentVolumeClaim: {claimName: kubetune-models}}
"""
"""kind's default StorageClass (local-path) binds ReadWriteOnce claims on its one node."""


KIND_JOB_SPEC = {
    "baseModel": {"uri": "pvc://kubetune-models/base/SmolLM2-135M-Instruct"},
    "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "2", "memory": "6Gi"},
}
"""What changes in examples/quickstart/finetunejob.yaml on kind: the model from the models claim
(no model cache there) and CPU resources (kind has no GPUs)."""


def plan(opts: Options) -> list[Step]:
    images = opts.images or scheme_images()
    py = str(opts.venv / "bin" / "python")
    kubetune = str(opts.venv / "bin" / "kubetune")
    data, model = opts.out / "data", opts.out / "base-model"
    ns = ["--namespace", opts.namespace]
    steps = [
        Step("kind cluster", ["kind", "create", "cluster", "--name", opts.cluster, "--wait", "180s"], check=False),
        Step("images", [sys.executable, str(ROOT / "scripts" / "images.py"), "build", "--tool", "docker",
                        "--targets", *TARGETS]),
    ]
    steps += [Step(f"load {ref}", ["kind", "load", "docker-image", ref, "--name", opts.cluster])
              for ref in images.values()]
    steps += [
        Step("KubeRay chart repository", ["helm", "repo", "add", "kuberay", "https://ray-project.github.io/kuberay-helm/",
                                           "--force-update"]),
        Step("KubeRay", ["helm", "upgrade", "--install", "kuberay-operator", "kuberay/kuberay-operator",
                         "--version", KUBERAY_CHART_VERSION, "--namespace", "kuberay-system", "--create-namespace",
                         "--wait"]),
        Step("kubetune", ["helm", "upgrade", "--install", "kubetune", str(ROOT / "charts" / "kubetune"),
                          "--namespace", NAMESPACE, "--create-namespace", "--wait",
                          "--set", "images.trainer.variant=cpu", "--set", "images.pullPolicy=IfNotPresent"]),
        Step("operator ready", ["kubectl", "--namespace", NAMESPACE, "rollout", "status", "deployment/kubetune",
                                "--timeout=180s"]),
        Step("quickstart data", [py, str(ROOT / "examples" / "quickstart" / "make_dataset.py"), "--out", str(data)]),
        Step("quickstart model", [kubetune, "models", "import-gguf", "--output", str(model)]),
        Step("claims and loader pod", ["kubectl", *ns, "apply", "-f", str(opts.out / "storage.yaml")]),
        Step("loader ready", ["kubectl", *ns, "wait", "--for=condition=Ready", "pod/kubetune-loader", "--timeout=300s"]),
        Step("copy data", ["kubectl", *ns, "cp", str(data), "kubetune-loader:/data/quickstart"]),
        Step("copy model", ["kubectl", *ns, "cp", str(model), "kubetune-loader:/models/base/SmolLM2-135M-Instruct"]),
        Step("loader gone", ["kubectl", *ns, "delete", "pod", "kubetune-loader", "--wait=true"]),
        Step("FineTuneJob", ["kubectl", *ns, "apply", "-f", str(opts.out / "finetunejob.json")]),
        Step("training succeeds", ["kubectl", *ns, "wait", "--for=condition=Succeeded", f"ftj/{JOB}",
                                   f"--timeout={opts.timeout_minutes}m"]),
        Step("status", ["kubectl", *ns, "get", "ftj", JOB, "-o", "wide"]),
    ]
    return steps


def write_inputs(opts: Options, images: dict[str, str]) -> None:
    """The two manifests the plan applies (the loader uses the CPU trainer image)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "storage.yaml").write_text(STORAGE.replace("IMAGE", images["trainer-cpu"]))
    import yaml  # from the venv (run through `make kind-e2e`, which needs it)

    job = yaml.safe_load((ROOT / "examples" / "quickstart" / "finetunejob.yaml").read_text())
    job["spec"].update(KIND_JOB_SPEC)
    (opts.out / "finetunejob.json").write_text(json.dumps(job, indent=2))


def preflight() -> list[str]:
    problems = [f"{tool} is not installed" for tool in ("docker", "kind", "helm", "kubectl") if not shutil.which(tool)]
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        problems.append("docker has no running daemon (kind needs one)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/kind_e2e.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--cluster", default="kubetune")
    parser.add_argument("--timeout-minutes", type=int, default=60)
    args = parser.parse_args(argv)
    opts = Options(cluster=args.cluster, timeout_minutes=args.timeout_minutes)
    steps = plan(opts)
    if args.dry_run:
        for step in steps:
            print(f"# {step.what}\n{shlex.join(step.argv)}")
        return 0
    problems = preflight()
    if problems:
        print("kind-e2e cannot run here: " + "; ".join(problems), file=sys.stderr)
        return 2
    write_inputs(opts, scheme_images())
    for number, step in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {step.what}: {shlex.join(step.argv)}", flush=True)
        proc = subprocess.run(step.argv)
        if proc.returncode != 0 and step.check:
            print(f"kind-e2e: step {step.what!r} failed (exit {proc.returncode}); see docs/real-cluster.md, "
                  "Troubleshooting", file=sys.stderr)
            return proc.returncode
    print(f"kind-e2e: {JOB} succeeded on kind cluster {opts.cluster}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
