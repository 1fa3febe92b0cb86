"""Smoke tests inside the built images (`make images && make images-test`).

Each test runs the real image with docker, podman or buildah (tests/images/runtime.py) as the
pods run it: the UID the manifests set, HOME=/tmp, commands and arguments taken from the
operator's and the chart's own renderings where a pod runs them. What each image must contain is
exercised, not listed: the trainer reads its dataset from S3 (s3fs, against moto's S3 server on
127.0.0.1), trains and exports an adapter, and answers KubeRay's injected wget probes; the
gateway scores a toxic answer with the offline scorer's model; the operator reconciles a
FineTuneJob into a RayJob against the Kubernetes API emulator on the host.

Skipped without built images, except under `make images-test` (KUBETUNE_IMAGES_REQUIRED=1),
where a missing image fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from kubetune.operator.kuberay import HEAD_PROBE
from tests.images.runtime import ImageRuntime, Mount

pytestmark = [pytest.mark.images, pytest.mark.slow]

UID = "1000:1000"
"""What the operator's pod security context sets for training and serving pods."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()
    except OSError:
        return None


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s\n{tail}")


def writable(path: Path) -> Path:
    """A host folder the container's non-root user may write."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


# ----------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def trainer() -> ImageRuntime:
    return ImageRuntime.for_target(os.environ.get("KUBETUNE_TRAINER_TARGET", "trainer-cpu"))


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 API on 127.0.0.1, a real HTTP server the container reaches over the host network."""
    pytest.importorskip("moto.server", reason="moto[server] provides the S3 API the trainer reads from")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "smoke", "AWS_SECRET_ACCESS_KEY": "smoke", "AWS_DEFAULT_REGION": "us-east-1"}


def test_trainer_trains_from_s3_and_exports_an_adapter(trainer, s3_server, tmp_path):
    import boto3

    from tests.fixtures.tiny_model import build_tiny_model

    work = writable(tmp_path / "work")
    build_tiny_model(work / "model")
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)}
            for a in range(4) for b in range(3)]
    s3 = boto3.client("s3", endpoint_url=s3_server, **{k.lower(): v for k, v in S3_ENV.items()
                                                          if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    s3.create_bucket(Bucket="datasets")
    s3.put_object(Bucket="datasets", Key="sums/train.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    job = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "smoke", "namespace": "default"},
           "spec": {"baseModel": {"uri": "/work/model"},
                    "datasets": [{"name": "sums", "uri": "s3://datasets/sums/train.jsonl", "format": "alpaca"}],
                    "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8}},
                    "preprocessing": {"validationSplit": 0.25},
                    "hyperparameters": {"maxSteps": 2, "batchSize": 1, "learningRate": 0.01},
                    "resources": {"workers": 1, "gpusPerWorker": 0},
                    "evaluation": {"metrics": ["loss"], "safety": {"enabled": False}},
                    "output": {"uri": "/work/artifact"}}}
    (work / "job.yaml").write_text(yaml.safe_dump(job))
    for path in work.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    proc = trainer.run(["train", "-f", "/work/job.yaml", "--local"], user=UID, timeout=900,
                       env={**S3_ENV, "AWS_ENDPOINT_URL": s3_server, "RAY_AUTH_MODE": "disabled",
                            "OMP_NUM_THREADS": "1"},
                       mounts=[Mount(work, "/work", read_only=False)])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    artifact = work / "artifact"
    for name in ("manifest.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (artifact / name).is_file(), f"{name} missing\n{output[-3000:]}"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["artifact"]["kind"] == "adapter"
    report = json.loads((artifact / "dataset_report.json").read_text())
    assert "s3://datasets/sums/train.jsonl" in json.dumps(report), report


def test_trainer_answers_kuberays_probes(trainer, tmp_path):
    """KubeRay starts pods with `/bin/bash -lc -- ulimit -n 65536; ray start ...` and probes them with
    wget; both need to work in the image as the pod's non-root user."""
    script = ("ulimit -n 65536; ray start --head --num-cpus=1 --dashboard-host=0.0.0.0 --disable-usage-stats"
              " --include-dashboard=true >/tmp/ray-start.log 2>&1 || { cat /tmp/ray-start.log; exit 3; }; "
              f"for i in $(seq 90); do ({HEAD_PROBE}) && ray stop --force >/dev/null && exit 0; sleep 1; done; "
              "ray stop --force; exit 4")
    proc = trainer.run(["-lc", "--", script], command=["/bin/bash"], user=UID, timeout=300,
                       env={"RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("success") >= 2


def test_trainer_image_runs_the_in_pod_entrypoints(trainer):
    """The argv the operator renders for the monitor CronJob and fetch init containers exist."""
    for args in (["monitor", "--help"], ["fetch", "--help"], ["train", "--help"]):
        proc = trainer.run(args, user=UID, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])


# ----------------------------------------------------------------------------- gateway


def test_gateway_proxies_and_scores_with_the_offline_model(tmp_path):
    from openai import OpenAI

    from kubetune.api import parse_modeldeployment
    from kubetune.operator import render_serving as rs
    from tests.serving.serving_support import AppThread, ScriptedUpstream

    gateway = ImageRuntime.for_target("gateway")
    md = parse_modeldeployment({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
                                "metadata": {"name": "chat", "namespace": "ml", "uid": "u1"},
                                "spec": {"model": {"uri": "pvc://models/chat"},
                                         "gateway": {"logging": {"sampleRate": 1.0}}}})
    inp = rs.RenderInput(md=md, model=rs.ResolvedModel(uri="pvc://models/chat", served_name="chat"))
    objects = rs.render_all(inp)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway")
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("gateway"))

    upstream = ScriptedUpstream(models=(("chat", None),))
    upstream.text = "You are a stupid idiot and I hate you, shut up you moron."
    apps = AppThread()
    try:
        upstream_url = apps.serve(upstream.app())
        port = free_port()
        args = list(container["args"])
        args[args.index("--upstream") + 1] = upstream_url
        args[args.index("--port") + 1] = str(port)
        args[args.index("--host") + 1] = "127.0.0.1"
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        for name, text in config["data"].items():
            (config_dir / name).write_text(text)
        key_dir = tmp_path / "engine-key"
        key_dir.mkdir()
        (key_dir / rs.ENGINE_KEY).write_text("engine-secret")
        for path in (config_dir, key_dir, *config_dir.iterdir(), *key_dir.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        logs = writable(tmp_path / "logs")
        mounts = [Mount(config_dir, rs.GATEWAY_CONFIG_DIR), Mount(key_dir, rs.ENGINE_KEY_DIR),
                  Mount(logs, rs.PAYLOAD_LOG_DIR, read_only=False)]
        env = {e["name"]: e.get("value", "gateway-smoke-0") for e in container["env"]}
        log = tmp_path / "gateway.log"
        proc = gateway.start(args, command=container["command"], user=UID, env=env, mounts=mounts, log=log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: http_get(f"{base}/healthz"), 120, "the gateway answers /healthz", proc, log)
            client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["chat"]
            reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == upstream.text
            metrics = http_get(f"{base}/metrics") or ""
            assert "kubetune_gateway_requests_total" in metrics

            def scored():
                lines = [line for path in sorted(logs.rglob("*.jsonl")) for line in path.read_text().splitlines()]
                return [r for r in map(json.loads, filter(None, lines)) if r.get("safety")]

            wait_until(scored, 60, f"a scored payload record in {logs}", proc, log)
        finally:
            code = gateway.stop(proc)
        assert code == 0, log.read_text()[-3000:]  # SIGTERM: the gateway drains and exits cleanly
        scored = scored()
        assert "toxicity" in scored[-1]["safety"]["categories"], scored[-1]["safety"]
    finally:
        apps.close()


# ----------------------------------------------------------------------------- operator


def test_operator_from_the_chart_reconciles_a_finetunejob(tmp_path, k8s_emulator, kube_http, namespace):
    from tests.chart.chart_render import render_chart
    from tests.harness.client import wait_for
    from tests.harness.server import write_kubeconfig
    from tests.operator.helpers import ftj_manifest

    operator = ImageRuntime.for_target("operator")
    health, metrics = free_port(), free_port()
    rendered = render_chart({"operator": {"healthPort": health, "metricsPort": metrics,
                                          "watch": {"mode": "namespaced", "namespaces": [namespace]}}})
    (deployment,) = rendered.of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    kube = tmp_path / "kube"
    kube.mkdir()
    kube.chmod(0o755)
    write_kubeconfig(kube / "config", k8s_emulator.url, namespace).chmod(0o644)
    env["KUBECONFIG"] = "/etc/kube/config"
    log = tmp_path / "operator.log"
    # The chart gives args only: the image's entrypoint must be `kubetune`.
    assert "command" not in container
    proc = operator.start(container["args"], user=user, env=env, mounts=[Mount(kube, "/etc/kube")], log=log)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{health}/healthz"), 120,
                   "the operator's health probe answers", proc, log)
        kube_http.create("finetunejobs", namespace, ftj_manifest("smoke", namespace))
        rayjob = wait_for(lambda: kube_http.get("rayjobs", namespace, "smoke-train"), 60,
                          message="the operator in its image created the RayJob")
        images = {c["image"] for group in [rayjob["spec"]["rayClusterSpec"]["headGroupSpec"],
                                           *rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
                  for c in group["template"]["spec"]["containers"]}
        assert images == {env["KUBETUNE_TRAINER_IMAGE"]}
        assert "kubetune_finetunejobs" in (http_get(f"http://127.0.0.1:{metrics}/metrics") or "")
    finally:
        code = operator.stop(proc)
    assert code in (0, -15, 143), log.read_text()[-3000:]
