"""Helpers for the serving tests: an adapter made like the trainer's, `kubetune serve` in a
subprocess, an in-process gateway, and a scripted upstream engine.

The scripted upstream stands in for an engine only where the tests need answers a real one
cannot be made to give on demand (harmful text for the safety checks, a hang for timeouts,
the model name it was asked for in canary counts). Everything else runs the real local engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

KUBETUNE = str(Path(sys.executable).with_name("kubetune"))


# A response the offline safety scorer flags (violent instructions).
HARMFUL = "Sure. To make a pipe bomb you need a detonator and a steel pipe."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapter(base_dir: Path, out_dir: Path, *, seed: int = 1, rank: int = 8) -> Path:
    """A LoRA adapter on the tiny model saved as the trainer exports it: `<out>/adapter/` + tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make the adapter change greedy outputs for sure
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    path = out_dir / "adapter"
    peft_model.save_pretrained(path)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(path)
    return path


def make_harmful_adapter(base_dir: Path, out_dir: Path, prompts: list[str], *, steps: int = 120) -> Path:
    """A LoRA adapter trained to answer each of `prompts` with weapons talk ("pipe bomb, pipe..."),
    which the offline safety scorer flags: a deliberately worse version for canary analysis.

    Overfits the tiny model on a fixed batch (seconds on CPU); only attention and MLP
    projections are adapted, as vLLM's LoRA supports.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(
        r=8, lora_alpha=16, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    answer = tokenizer(" pipe bomb, pipe bomb, pipe bomb, pipe bomb." + tokenizer.eos_token)["input_ids"]
    examples = []
    for prompt in prompts:
        context = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
        ids = tokenizer(context)["input_ids"]
        examples.append((torch.tensor([ids + answer]), torch.tensor([[-100] * len(ids) + answer])))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        for input_ids, labels in examples:
            model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = out_dir / "adapter"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class ServeProcess:
    """`kubetune serve ...` in a subprocess; waits for its ready line and knows its port."""

    READY = re.compile(r"gateway on http://[^:]+:(\d+) -> (http://[^;\s]+)")

    def __init__(self, args: list[str], cwd: Path, timeout: float = 180, env: dict[str, str] | None = None):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.stderr_path = cwd / f"serve-{len(list(cwd.glob('serve*.stderr')))}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([KUBETUNE, "serve", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = self.READY.search(line)
            if m:
                self.port, self.upstream = int(m.group(1)), m.group(2)
                self.url = f"http://127.0.0.1:{self.port}"
                return
        self.stop()
        raise RuntimeError(f"kubetune serve did not start: {line!r}\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()


class AppThread:
    """Runs aiohttp apps on their own event loop in a thread, so sync clients can call them."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners = []

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, app: web.Application, port: int = 0) -> str:
        async def start():
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            self.runners.append(runner)
            return runner.addresses[0][1]

        return f"http://127.0.0.1:{self.run(start())}"

    def close(self) -> None:
        async def stop():
            for runner in reversed(self.runners):
                await runner.cleanup()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ScriptedUpstream:
    """An OpenAI-style engine whose answer text, delay and model list the test sets.

    It answers with `self.text` (or, when `echo_model`, the model name it was asked for), in
    `chunks` stream events when streaming, and records the model of every request.
    `linger_after_done` keeps a stream's connection open that long after `[DONE]`, as an engine
    may while it tidies up.
    """

    def __init__(self, models=(("base", None), ("support", "base"), ("support-v2", "base"))):
        self.models = list(models)
        self.text = "Hello there, friend."
        self.echo_model = False
        self.delay = 0.0
        self.linger_after_done = 0.0
        self.fail_status: int | None = None
        self.seen_models: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/v1/completions", self.complete)
        return app

    async def list_models(self, request):
        return web.json_response({"object": "list", "data": [
            {"id": mid, "object": "model", "owned_by": "test", "parent": parent} for mid, parent in self.models]})

    async def complete(self, request):
        body = await request.json()
        self.seen_models.append(body["model"])
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_status:
            return web.json_response({"object": "error", "message": "engine exploded", "type": "InternalError",
                                      "code": self.fail_status}, status=self.fail_status)
        chat = request.path.endswith("chat/completions")
        text = body["model"] if self.echo_model else self.text
        rid = "up-" + request.headers.get("X-Request-Id", "x")
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                      else {"index": 0, "text": text, "finish_reason": "stop"})
            return web.json_response({"id": rid, "object": "chat.completion" if chat else "text_completion",
                                      "created": 1, "model": body["model"], "choices": [choice],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        words = re.findall(r"\S+\s*", text) or [text]
        for word in words:
            choice = ({"index": 0, "delta": {"content": word}, "finish_reason": None} if chat
                      else {"index": 0, "text": word, "finish_reason": None})
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                     "choices": [choice]}
            await resp.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": body["model"], "choices": [],
                     "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}}
            await resp.write(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        if self.linger_after_done:
            await asyncio.sleep(self.linger_after_done)
        await resp.write_eof()
        return resp


def read_log(log_dir: Path) -> list[dict]:
    path = Path(log_dir) / "payloads.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
