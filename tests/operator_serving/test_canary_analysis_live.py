"""Automatic canary analysis end to end: the shipped operator judges real traffic and acts.

Real: kopf (the whole operator, Events included), the local CPU engine with real LoRA adapters
on the tiny model, the gateway (`kubetune serve`, safety scoring on), its /metrics scraped by
the operator, the official `openai` client sending the traffic.
Played by the test, because the emulator has no controllers: the Deployment controller and the
kubelet (the pod is Running and Ready at 127.0.0.1; the gateway ConfigMap's `canary.json` is
copied to the file the gateway watches, as a ConfigMap volume would be updated).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.harness.client import wait_for
from tests.harness.fixtures import k8s_emulator, kube_http, namespace  # noqa: F401
from tests.harness.operator import OperatorRunner
from tests.serving.serving_support import ServeProcess, make_adapter, make_harmful_adapter

PROMPTS = [f"question {i}: tell me about item {i * 7}" for i in range(6)]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("canary-adapters")
    v1 = make_adapter(tiny_model_dir, work / "v1", seed=1)
    v2 = work / "v2" / "adapter"  # the same weights under a new URI: a canary as good as stable
    shutil.copytree(v1, v2)
    v3 = make_harmful_adapter(tiny_model_dir, work / "v3", PROMPTS)
    return {"v1": v1, "v2": v2, "v3": v3}


@pytest.fixture(scope="module")
def pod(tiny_model_dir, tmp_path_factory):
    """The serving pod's two containers in one process: the local engine and the gateway."""
    work = tmp_path_factory.mktemp("canary-pod")
    routes = work / "canary.json"
    routes.write_text('{"routes": []}')
    proc = ServeProcess(["--model", str(tiny_model_dir), "--served-model-name", "base", "--port", "0",
                         "--canary-config", str(routes), "--safety-scorer", "offline", "--safety-action", "flag",
                         "--max-tokens", "32", "--seed", "0", "--threads", "1"], cwd=work)
    proc.routes = routes
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def operator(k8s_emulator, pod):  # noqa: F811
    from kubetune.operator import handlers_modeldeployment as serving

    env = {"KUBETUNE_VLLM_ADMIN_PORT": pod.upstream.rsplit(":", 1)[1],
           "KUBETUNE_GATEWAY_METRICS_PORT": str(pod.port)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    serving.reset_state()
    try:
        with OperatorRunner(k8s_emulator.kubeconfig) as runner:
            yield runner
    finally:
        serving.reset_state()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Kubelet(threading.Thread):
    """Copies the gateway ConfigMap's canary routes into the file the gateway re-reads."""

    def __init__(self, http, namespace: str, configmap: str, path: Path):
        super().__init__(daemon=True)
        self.http, self.namespace, self.configmap, self.path = http, namespace, configmap, path
        self.stopping = threading.Event()

    def run(self) -> None:
        last = None
        while not self.stopping.wait(0.3):
            cm = self.http.get("configmaps", self.namespace, self.configmap)
            text = ((cm or {}).get("data") or {}).get("canary.json")
            if text and text != last:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, self.path)
                last = text


class Traffic(threading.Thread):
    """Clients asking for `tone`, streamed (so inter-token latency is measured too)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        self.stopping = threading.Event()
        self.sent = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                stream = self.client.chat.completions.create(
                    model="tone", messages=[{"role": "user", "content": PROMPTS[self.sent % len(PROMPTS)]}],
                    max_tokens=16, temperature=0, stream=True)
                for _ in stream:
                    pass
            except openai.APIError as exc:  # before the routes reach the gateway, or mid-reload
                self.errors.append(str(exc))
                time.sleep(0.2)
            self.sent += 1


def md_status(http, ns):
    return (http.get("modeldeployments", ns, "chat") or {}).get("status") or {}


def analysis_condition(http, ns):
    return next((c for c in md_status(http, ns).get("conditions") or [] if c["type"] == "CanaryAnalysis"), {})


def served_uris(http, ns):
    return {a["name"]: a["uri"] for a in md_status(http, ns).get("adapters") or []}


def events(http, ns, reason):
    return [e for e in http.list("events", ns) if e.get("reason") == reason]


def test_a_good_canary_is_promoted_and_a_worse_one_rolled_back(operator, kube_http, namespace, pod, adapters):  # noqa: F811
    http, ns = kube_http, namespace
    uri = {k: f"file://{v}" for k, v in adapters.items()}
    http.create("modeldeployments", ns, {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
        "spec": {"model": {"uri": "file:///models/base"},
                 "adapters": [{"name": "tone", "uri": uri["v1"]}],
                 "rollout": {"strategy": "Canary", "canaryWeight": 50,
                             "analysis": {"intervalSeconds": 3, "windows": 2, "minRequests": 8}}}})
    deploy = wait_for(lambda: http.get("deployments", ns, "chat-vllm"), 20, message="the Deployment")
    http.patch_status("deployments", ns, "chat-vllm", {
        "observedGeneration": deploy["metadata"].get("generation", 1), "replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 1, "availableReplicas": 1})
    labels = {"app.kubernetes.io/name": "kubetune-serving", "app.kubernetes.io/instance": "chat",
              "kubetune.io/modeldeployment": "chat"}
    http.create("pods", ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chat-0", "labels": labels},
                             "spec": {"containers": [{"name": "vllm", "image": "vllm"}]}})
    http.patch_status("pods", ns, "chat-0", {"phase": "Running", "podIP": "127.0.0.1",
                                             "conditions": [{"type": "Ready", "status": "True"}]})
    kubelet = Kubelet(http, ns, "chat-gateway", pod.routes)
    kubelet.start()
    traffic = Traffic(pod.url)
    traffic.start()
    try:
        wait_for(lambda: served_uris(http, ns) == {"tone": uri["v1"]}, 30, message="v1 loaded as stable")

        # v2 is as good as v1: two passing windows promote it, with the figures on record.
        http.patch("modeldeployments", ns, "chat", {"spec": {"adapters": [{"name": "tone", "uri": uri["v2"]}]}})
        running = wait_for(lambda: (c := md_status(http, ns).get("canary")) and c.get("analysis") and c, 30,
                           message="the canary's analysis")
        assert running["analysis"]["windowsNeeded"] == 2
        promoted = wait_for(lambda: (c := analysis_condition(http, ns)).get("reason") == "Promoted" and c, 90,
                            message=lambda: f"promotion: {md_status(http, ns)}")
        assert promoted["status"] == "True" and "2 of 2 windows passed" in promoted["message"]
        wait_for(lambda: served_uris(http, ns) == {"tone": uri["v2"]} and not md_status(http, ns).get("canary"), 30)
        assert events(http, ns, "Promoted")

        # v3 answers with weapons talk: the safety flag check fails its first window.
        http.patch("modeldeployments", ns, "chat", {"spec": {"adapters": [{"name": "tone", "uri": uri["v3"]}]}})
        wait_for(lambda: (md_status(http, ns).get("canary") or {}).get("uri") == uri["v3"], 30, message="v3 canary")
        rolled = wait_for(lambda: (c := analysis_condition(http, ns)).get("reason") == "RolledBack" and c, 90,
                          message=lambda: f"rollback: {md_status(http, ns)}")
        assert rolled["status"] == "False"
        assert "safety flag ratio" in rolled["message"] and f"{uri['v2']} kept" in rolled["message"], rolled
        status = wait_for(lambda: (s := md_status(http, ns)) and not s.get("canary") and s, 30)
        assert served_uris(http, ns) == {"tone": uri["v2"]}
        annotations = http.get("modeldeployments", ns, "chat")["metadata"]["annotations"]
        assert json.loads(annotations["kubetune.io/canary-rolled-back"]) == {"tone": uri["v3"]}
        warning = wait_for(lambda: events(http, ns, "RolledBack"), 10, message="the RolledBack Event")
        assert warning[0]["type"] == "Warning" and "safety flag ratio" in warning[0]["message"]
        assert status["phase"] in ("Ready", "Deploying")
    finally:
        traffic.stopping.set()
        kubelet.stopping.set()
        traffic.join(60)
        kubelet.join(5)
    assert traffic.sent > 0
