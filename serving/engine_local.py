"""The local CPU engine: a base model and its PEFT adapters behind vLLM's OpenAI API.

It answers the same endpoints as vLLM's OpenAI server, including the runtime LoRA API
(`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`, with vLLM's request shape), so the
gateway and the operator's adapter client work against either. Generation runs on one worker
thread, never on the event loop. Requests that arrive together for the same model with the same
decoding settings are generated together in one left-padded batch (static batching: a batch
runs until its longest answer ends), which on a CPU multiplies throughput for concurrent
clients; streamed tokens cross back to the loop through an asyncio queue.

Greedy answers do not depend on the batching: a row of a batch computes its logits with other
shapes than the request alone would (padding, more rows), which moves them by ~1e-4, enough to
flip the argmax where the two best tokens are about tied. Each greedy row of a batch watches the
margin between its two best logits; a row that meets a margin under NEAR_TIE stops there and is
generated again alone, so every greedy answer is the one the request gets on its own, and its
stream continues where it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .errors import ApiError, openai_errors
from .openai_shapes import content_text, validate_request

log = logging.getLogger("kubetune.serving.engine")

DEFAULT_MAX_TOKENS = 64
DEFAULT_MAX_BATCH_SIZE = 8
"""Concurrent requests generated together; on 2 CPU cores a batch of 8 costs little more per
step than one request (decoding is bound by reading the weights, not by arithmetic)."""
NEAR_TIE = 0.01
"""Top-two logit margin under which a batched greedy row is generated again alone: about 90 times
the largest batched-vs-alone logit difference measured in float32 (1.1e-4, SmolLM2-135M with the
quickstart adapter, 16 prompts, docs/serving.md), and rare enough to keep the batching's
throughput."""
DEFAULT_BATCH_WINDOW_S = 0.05
"""How long a batch that is not full waits for companions before it starts: nothing next to a
generation of seconds, and long enough for the clients of the previous batch, answered together,
to send their next requests through the gateway."""


@dataclass
class GenerationJob:
    kind: str  # chat | completion
    model: str  # served name: the base or an adapter
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def _adapter_dir_problem(path: Path) -> str | None:
    if not path.is_dir():
        return f"adapter folder {path} does not exist"
    if not (path / "adapter_config.json").is_file():
        return f"{path} holds no adapter_config.json: not a PEFT adapter folder"
    return None


class LocalEngine:
    """Loads the model once; every call that touches it runs on the single worker thread."""

    def __init__(self, model_dir: str | os.PathLike, *, served_name: str | None = None,
                 adapters: dict[str, str] | None = None, max_model_len: int | None = None,
                 trust_remote_code: bool = False, dtype: str = "float32", threads: int | None = None,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, batch_window_s: float = DEFAULT_BATCH_WINDOW_S):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"--model {self.model_dir}: no config.json there; expected a Hugging Face model folder")
        self.served_name = served_name or self.model_dir.name
        self.trust_remote_code = trust_remote_code
        self.dtype = dtype
        self.threads = threads
        self._max_model_len = max_model_len
        self.adapters: dict[str, str] = {}  # name -> path
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if batch_window_s < 0:
            raise ValueError(f"batch_window_s must not be negative, got {batch_window_s}")
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._queue: list[_Pending] = []
        self._queue_cond = threading.Condition()
        self.near_tie = NEAR_TIE
        self.regenerated_alone = 0
        """Batched greedy rows finished alone after a near-tie (module docstring)."""
        self.created = int(time.time())
        self._load_base()
        for name, path in (adapters or {}).items():
            self._load_adapter(name, path)

    # ------------------------------------------------------------------ model handling (worker thread)

    def _load_base(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=self.trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=getattr(torch, self.dtype), trust_remote_code=self.trust_remote_code
        )
        self.model.eval()
        config = self.model.config
        self.max_model_len = self._max_model_len or getattr(config, "max_position_embeddings", None) or 2048
        self.eos_ids = _eos_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if name == self.served_name or name in self.adapters:
            raise ApiError(400, f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        problem = _adapter_dir_problem(Path(path))
        if problem:
            raise ApiError(400, f"cannot load adapter '{name}': {problem}", param="lora_path")
        try:
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            else:
                self.model.load_adapter(path, adapter_name=name)
        except Exception as exc:  # shape mismatch, wrong base model, bad safetensors
            raise ApiError(400, f"cannot load adapter '{name}' from {path}: {exc.__class__.__name__}: {exc}",
                           param="lora_path") from None
        self.model.eval()
        self.adapters[name] = str(path)
        log.info("loaded adapter %s from %s", name, path)

    def _unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.", param="lora_name")
        if len(self.adapters) == 1:
            self.model = self.model.unload()  # back to the plain base model
        else:
            if self.model.active_adapter == name:
                self.model.set_adapter(next(a for a in self.adapters if a != name))
            self.model.delete_adapter(name)
        del self.adapters[name]
        log.info("unloaded adapter %s", name)

    def _generate(self, job: GenerationJob, on_text=None) -> GenerationResult:
        """One request on its own (the batcher's path with a batch of one)."""
        return self._generate_batch([(job, on_text)])[0]

    def _generate_batch(self, items: list[tuple[GenerationJob, Callable | None]]) -> list[GenerationResult]:
        """Generate for several requests in one left-padded `generate` call.

        All jobs must share the model and the sampling settings (`_batch_key`). Each row stops on
        its own (EOS, its max_tokens, a stop string, cancellation) and its text is streamed to its
        own `on_text`; finished rows ride along as padding until the longest one ends. A greedy
        row that meets a near-tie is finished alone (module docstring).
        """
        jobs = [job for job, _ in items]
        model_name = jobs[0].model
        if any(_batch_key(j) != _batch_key(jobs[0]) for j in jobs[1:]):
            raise ValueError("a batch must share the model and the sampling settings")
        if model_name != self.served_name and model_name not in self.adapters:
            raise ApiError(404, f"The model `{model_name}` does not exist.", param="model", code="model_not_found")
        rows = [_Row(self.tokenizer, job, on_text, self.eos_ids) for job, on_text in items]
        try:
            watch = len(rows) > 1 and jobs[0].temperature <= 0
            self._run_rows(rows, watch_margins=watch)
            for i, row in enumerate(rows):
                if row.near_tie:
                    alone = _Row(self.tokenizer, row.job, row.on_text, self.eos_ids, sent=row.sent)
                    rows[i] = alone
                    self.regenerated_alone += 1
                    log.debug("greedy row met a near-tie after %d tokens; generating it alone", len(row.ids))
                    self._run_rows([alone], watch_margins=False)
                    if not alone.text.startswith(row.text):
                        log.warning("a regenerated greedy answer differs from its streamed start %r", row.text)
        finally:
            for row in rows:  # a near-tie row still here (an error came first) ends its stream too
                row.end()
        return [row.result() for row in rows]

    def _run_rows(self, rows: list["_Row"], *, watch_margins: bool) -> None:
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        near_tie = self.near_tie

        class _WatchMargins(LogitsProcessor):
            # Sees each step's logits before the greedy pick: a row about to pick from a near-tie
            # is marked, and _TrackRows stops it without taking that token.
            def __call__(self, input_ids, scores):
                top = torch.topk(scores.float(), 2, dim=-1).values
                for row, margin in zip(rows, (top[:, 0] - top[:, 1]).tolist()):
                    if not row.done and margin < near_tie:
                        row.near_tie = True
                return scores

        class _TrackRows(StoppingCriteria):
            # Called once per step after the new token is appended: each row takes its token.
            def __call__(self, input_ids, scores, **kwargs):
                last = input_ids[:, -1].tolist()
                return torch.tensor([row.accept(t) for row, t in zip(rows, last)], dtype=torch.bool,
                                    device=input_ids.device)

        jobs = [row.job for row in rows]
        model_name = jobs[0].model
        width = max(len(j.prompt_ids) for j in jobs)
        input_ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, job in enumerate(jobs):
            input_ids[i, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids, dtype=torch.long)
            attention_mask[i, width - len(job.prompt_ids):] = 1
        first = jobs[0]
        kwargs = dict(
            max_new_tokens=max(j.max_tokens for j in jobs),
            do_sample=first.temperature > 0,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids or None,
            stopping_criteria=StoppingCriteriaList([_TrackRows()]),
        )
        if watch_margins:
            kwargs["logits_processor"] = LogitsProcessorList([_WatchMargins()])
        if first.temperature > 0:
            kwargs.update(temperature=first.temperature, top_p=first.top_p, top_k=0)
        if first.seed is not None:  # a seeded request is always alone in its batch
            torch.manual_seed(first.seed)
        with torch.inference_mode():
            if self.adapters and model_name == self.served_name:
                with self.model.disable_adapter():
                    self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            else:
                if self.adapters:
                    self.model.set_adapter(model_name)
                self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # ------------------------------------------------------------------ batching (event loop -> worker thread)

    def _submit(self, job: GenerationJob, on_text=None) -> asyncio.Future:
        """Queue a job for the worker thread; the future resolves to its GenerationResult."""
        pending = _Pending(job, on_text, concurrent.futures.Future())
        with self._queue_cond:
            self._queue.append(pending)
            self._queue_cond.notify_all()
        try:
            self.executor.submit(self._run_next_batch)
        except RuntimeError:  # the executor is shut down
            with self._queue_cond:
                if pending in self._queue:
                    self._queue.remove(pending)
            raise ApiError(503, "the engine is shutting down") from None
        return asyncio.wrap_future(pending.future)

    def _take_batch(self) -> list[_Pending]:
        """The oldest queued job and the queued jobs that can share its batch (worker thread).

        Waits up to `batch_window_s` for companions, so requests sent together (a burst, or the
        next requests of clients answered together by the previous batch) are generated together
        instead of one and then the rest.
        """
        with self._queue_cond:
            while self._queue:
                first = self._queue[0]
                if first.future.set_running_or_notify_cancel():
                    break
                self._queue.pop(0)  # its caller gave up before it started
            else:
                return []
            key = _batch_key(first.job)
            batch = [first]
            if key is not None:
                deadline = time.monotonic() + self.batch_window_s
                while True:
                    batch = [first] + [p for p in self._queue[1:] if _batch_key(p.job) == key][: self.max_batch_size - 1]
                    remaining = deadline - time.monotonic()
                    if len(batch) >= self.max_batch_size or remaining <= 0:
                        break
                    self._queue_cond.wait(remaining)
            taken = []
            for pending in batch:
                self._queue.remove(pending)
                if pending is first or pending.future.set_running_or_notify_cancel():
                    taken.append(pending)
            return taken

    def _run_next_batch(self) -> None:
        batch = self._take_batch()
        if not batch:
            return  # an earlier batch took this submission's job
        if len(batch) > 1:
            log.debug("generating %d requests for %s in one batch", len(batch), batch[0].job.model)
        try:
            results = self._generate_batch([(p.job, p.on_text) for p in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the error
            for pending in batch:
                pending.future.set_exception(exc)
            return
        for pending, result in zip(batch, results):
            pending.future.set_result(result)

    # ------------------------------------------------------------------ requests -> jobs (event loop)

    def _job(self, kind: str, body: dict) -> GenerationJob:
        validate_request(kind, body, max_tokens_limit=None)
        if body.get("n", 1) != 1:
            raise ApiError(400, "this engine generates one choice per request: `n` must be 1", param="n")
        if kind == "chat":
            messages = [{"role": m["role"], "content": content_text(m.get("content"))} for m in body["messages"]]
            if not self.tokenizer.chat_template:
                raise ApiError(400, f"model {self.served_name!r} has no chat template: use /v1/completions",
                               param="messages")
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            prompt = body["prompt"]
            if isinstance(prompt, list):
                if len(prompt) != 1:
                    raise ApiError(400, "this engine takes one prompt per request", param="prompt")
                prompt = prompt[0]
            prompt_ids = self.tokenizer(prompt)["input_ids"]
        room = self.max_model_len - len(prompt_ids)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if room < 1 or (max_tokens and max_tokens > room):
            raise ApiError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                                f"requested {len(prompt_ids) + (max_tokens or 1)} tokens ({len(prompt_ids)} in the "
                                f"messages, {max_tokens or 1} in the completion).", param="max_tokens")
        temperature = body.get("temperature", 1.0)
        top_p = body.get("top_p", 1.0)
        for name, value, low, high in (("temperature", temperature, 0, 2), ("top_p", top_p, 0, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ApiError(400, f"`{name}` must be a number within [{low}, {high}], got {value!r}", param=name)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ApiError(400, "`stop` must be a string or a list of strings", param="stop")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ApiError(400, "`seed` must be an integer", param="seed")
        return GenerationJob(kind, body["model"], prompt_ids, max_tokens or min(DEFAULT_MAX_TOKENS, room),
                             float(temperature), float(top_p), seed, stop)

    def model_cards(self) -> list[dict]:
        base = {"id": self.served_name, "object": "model", "created": self.created, "owned_by": "kubetune",
                "root": str(self.model_dir), "parent": None, "max_model_len": self.max_model_len}
        return [base] + [
            {"id": name, "object": "model", "created": self.created, "owned_by": "kubetune", "root": path,
             "parent": self.served_name}
            for name, path in self.adapters.items()
        ]

    # ------------------------------------------------------------------ HTTP

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[openai_errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/load_lora_adapter", self.load_lora_adapter)
        app.router.add_post("/v1/unload_lora_adapter", self.unload_lora_adapter)
        app.on_cleanup.append(self._shutdown)
        return app

    async def _shutdown(self, _app) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        with self._queue_cond:
            left, self._queue = self._queue, []
        for pending in left:
            pending.future.cancel()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": self.model_cards()})

    async def _json(self, request: web.Request):
        try:
            return json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON in request body: {exc}") from None

    async def load_lora_adapter(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        name, path = (body.get("lora_name"), body.get("lora_path")) if isinstance(body, dict) else (None, None)
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        await self._run(self._load_adapter, name, path)
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora_adapter(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        name = body.get("lora_name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        await self._run(self._unload_adapter, name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "completion")

    async def _complete(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = await self._json(request)
        job = self._job(kind, body)
        if job.model != self.served_name and job.model not in self.adapters:
            raise ApiError(404, f"The model `{job.model}` does not exist.", param="model", code="model_not_found")
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + rid
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, job, rid, usage)
        try:
            result = await self._submit(job)
        except asyncio.CancelledError:
            job.cancelled.set()  # the client left: its row stops at the next step
            raise
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                 "total_tokens": result.prompt_tokens + result.completion_tokens}
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                      "finish_reason": result.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
            obj = "text_completion"
        return web.json_response({"id": rid, "object": obj, "created": int(time.time()), "model": job.model,
                                  "choices": [choice], "usage": usage})

    async def _stream(self, request: web.Request, job: GenerationJob, rid: str, include_usage: bool):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_text(piece):  # worker thread -> event loop
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        future = self._submit(job, on_text)
        created = int(time.time())
        chat = job.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(delta_text: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if delta_text is None else {"content": delta_text})
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
            chunk = {"id": rid, "object": obj, "created": created, "model": job.model, "choices": [choice]}
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            if chat:
                await response.write(event(None, role=True))
            while True:
                piece = await queue.get()
                if piece is None:
                    break
                await response.write(event(piece))
            try:
                result = await future
            except Exception as exc:  # headers are sent: the error travels as the last event
                if not isinstance(exc, ApiError):
                    log.exception("generation failed for %s", rid)
                    exc = ApiError(500, f"generation failed: {exc.__class__.__name__}: {exc}"[:500])
                await response.write(b"data: " + json.dumps(exc.body()).encode() + b"\n\n")
                await response.write_eof()
                return response
            await response.write(event(None if chat else "", finish=result.finish_reason))
            if include_usage:
                usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                         "total_tokens": result.prompt_tokens + result.completion_tokens}
                await response.write(b"data: " + json.dumps({"id": rid, "object": obj, "created": created,
                                                              "model": job.model, "choices": [],
                                                              "usage": usage}).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            job.cancelled.set()  # the client left: stop generating for it
            raise
        return response


@dataclass
class _Pending:
    """A queued job, the callback for its text and the future its caller awaits."""

    job: GenerationJob
    on_text: Callable | None
    future: concurrent.futures.Future


def _batch_key(job: GenerationJob) -> tuple | None:
    """Jobs with equal keys can share a generate call; None: this job runs alone.

    A batch runs one model (the base or one adapter) with one decoding setting. A seeded request
    runs alone, so its seed alone decides its sample, as a user of `seed` expects.
    """
    if job.seed is not None:
        return None
    sampling = ("greedy",) if job.temperature <= 0 else ("sample", job.temperature, job.top_p)
    return (job.model, *sampling)


class _Row:
    """One request's share of a batch: its new tokens, its text so far, whether it is done.

    Decodes the whole answer each step (holding back split UTF-8), cuts at stop strings and
    hands text deltas to `on_text`; a row is done at EOS, at its max_tokens, at a stop string or
    when its client is gone.
    """

    def __init__(self, tokenizer, job: GenerationJob, on_text, eos_ids: list[int], *, sent: int = 0):
        self.tokenizer = tokenizer
        self.job = job
        self.on_text = on_text
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.sent = sent
        """Characters already handed to `on_text` (by an earlier row of the same request)."""
        self.text = ""
        self.hit_eos = False
        self.stopped = False
        self.done = False
        self.ended = False
        self.near_tie = False
        """Set by the margin watch: this step's token is not taken, the request is finished alone."""

    def accept(self, token: int) -> bool:
        """Take this step's token; returns whether the row is done (its later tokens are padding)."""
        if self.done:
            return True
        if self.near_tie:
            self.done = True
            return True
        self.ids.append(token)
        if token in self.eos_ids:
            self.hit_eos = True
        else:
            full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if not full.endswith("\ufffd"):  # else a multi-byte character is not complete yet
                for stop in self.job.stop:
                    at = full.find(stop)
                    if at != -1:
                        full = full[:at]
                        self.stopped = True
                self._emit(full)
        self.done = (self.hit_eos or self.stopped or self.job.cancelled.is_set()
                     or len(self.ids) >= self.job.max_tokens)
        return self.done

    def _emit(self, full: str) -> None:
        self.text = full
        if len(full) > self.sent:
            piece = full[self.sent:]
            self.sent = len(full)
            if self.on_text:
                self.on_text(piece)

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.stopped and self.ids:
            self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if self.on_text:
            self.on_text(None)

    def result(self) -> GenerationResult:
        finish = "stop" if self.hit_eos or self.stopped or len(self.ids) < self.job.max_tokens else "length"
        return GenerationResult(self.text, len(self.job.prompt_ids), len(self.ids), finish)


def _eos_ids(*values) -> list[int]:
    ids: list[int] = []
    for v in values:
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return ids
