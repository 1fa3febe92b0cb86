"""The OpenAI-compatible gateway in front of an engine (vLLM's OpenAI server or our local one).

One aiohttp server; one pooled keep-alive client session to the upstream. Streams are passed
through event by event (never re-chunked) and only looked at after the fact, for token counts,
the payload log and safety scoring. In `block` mode a stream is held back until it is scored:
a stream that was already sent cannot be taken back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from kubetune.common.safety import SafetyScore, make_scorer

from .auth import KeyFile, bearer_token
from .canary import CanaryRouter
from .errors import ApiError, normalise_error_body, openai_errors
from .metrics import GatewayMetrics
from .openai_shapes import chunk_text, flatten_messages, flatten_prompt, response_text, validate_request
from .payload_log import PayloadLogger, rfc3339
from .peers import PeerForwarder
from .rate_limit import Buckets, Limits, estimate_tokens, key_label
from .safety_batcher import SafetyBatcher

log = logging.getLogger("kubetune.serving.gateway")

REFUSAL_TEXT = "I can't help with that. The response was withheld by the content safety policy."
# An unknown name re-reads the engine's model list at most this often (adapters come and go
# at runtime), so a flood of bad names cannot hammer the engine.
MISS_REFRESH_SECONDS = 0.25


@dataclass
class GatewayConfig:
    upstream: str = "http://127.0.0.1:8000"
    upstream_api_key: str | None = None
    api_keys_file: str | None = None
    log_dir: str | None = None
    sample_rate: float = 0.1
    redact_pii: bool = True
    log_max_bytes: int = 50 * 1024 * 1024
    log_backups: int = 5
    feedback_buffer: int = 10_000
    safety_scorer: str = "offline"  # offline | llamaGuard | none
    safety_endpoint: str | None = None
    safety_action: str = "flag"  # log | flag | block
    max_request_bytes: int = 1024 * 1024
    max_tokens: int = 4096
    upstream_timeout: float = 600.0
    connect_timeout: float = 5.0
    canary_config: str | None = None
    models_ttl: float = 10.0
    reload_interval: float = 1.0  # how often the keys and canary files are checked for changes
    seed: int | None = None
    # The offline scorer in a child process of its own (its model holds the GIL for ~80 ms a
    # batch); Llama Guard is network-bound and stays on the batcher's thread.
    safety_process: bool = True
    # Set by the supervisor for `--workers N`: which worker this is, how many there are, and the
    # private folder holding each worker's Unix socket (feedback for a request another worker served).
    worker_index: int | None = None
    worker_count: int = 1
    peer_dir: str | None = None
    # Default limits of a key without its own in the keys file (and of all requests without auth).
    rate_limit_rpm: float | None = None
    rate_limit_tpm: float | None = None
    # Back-pressure: requests answered at once by the upstream, and how many may wait for a slot
    # (and for how long) before the gateway answers 503 with Retry-After instead of queueing more.
    max_concurrency: int = 256
    max_queue: int = 1024
    queue_timeout: float = 30.0

    def check(self) -> None:
        """Every bad setting at once, naming the flag."""
        errors = []
        if self.safety_action not in ("log", "flag", "block"):
            errors.append(f"--safety-action: {self.safety_action!r}; allowed: log, flag, block")
        if self.safety_scorer not in ("offline", "llamaGuard", "none"):
            errors.append(f"--safety-scorer: {self.safety_scorer!r}; allowed: offline, llamaGuard, none")
        if self.safety_scorer == "llamaGuard" and not self.safety_endpoint:
            errors.append("--safety-endpoint: required with --safety-scorer llamaGuard")
        if not 0 <= self.sample_rate <= 1:
            errors.append(f"--sample-rate: {self.sample_rate} is not within [0, 1]")
        for name in ("max_request_bytes", "max_tokens", "log_max_bytes", "max_concurrency"):
            if getattr(self, name) < 1:
                errors.append(f"--{name.replace('_', '-')}: must be positive")
        if self.max_queue < 0:
            errors.append("--max-queue: must not be negative")
        if not self.queue_timeout > 0:
            errors.append("--queue-timeout: must be positive")
        for name in ("rate_limit_rpm", "rate_limit_tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                errors.append(f"--{name.replace('_', '-')}: must be positive, got {value}")
        if not self.upstream.startswith(("http://", "https://")):
            errors.append(f"--upstream: {self.upstream!r} is not an http(s) URL")
        if errors:
            raise ValueError("; ".join(errors))


class _Outcome:
    """What one request did, gathered for metrics and the payload log."""

    __slots__ = ("model", "adapter", "status", "prompt", "text", "prompt_tokens", "completion_tokens", "ttft",
                 "last_event", "safety", "started", "accounted")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.model = ""
        self.adapter = ""
        self.status = 200
        self.prompt = ""
        self.text = None
        self.prompt_tokens = None
        self.completion_tokens = None
        self.ttft = None
        self.last_event = None  # when the last streamed event went out (inter-token latency)
        self.safety: SafetyScore | None = None
        self.accounted = False  # metrics and payload record already taken (a stream does it before [DONE])


class Gateway:
    def __init__(self, config: GatewayConfig):
        config.check()
        self.config = config
        self.upstream = config.upstream.rstrip("/")
        self.metrics = GatewayMetrics()
        self.keys = KeyFile(config.api_keys_file, check_interval=config.reload_interval) if config.api_keys_file else None
        self.payloads = (
            PayloadLogger(config.log_dir, sample_rate=config.sample_rate, redact_pii=config.redact_pii,
                          max_bytes=config.log_max_bytes, backups=config.log_backups,
                          buffer_size=config.feedback_buffer, seed=config.seed,
                          on_feedback=self._count_feedback)
            if config.log_dir else None
        )
        # Before the scorer: a bad canary file fails at once, with no scorer process to stop.
        self.canary = CanaryRouter(config.canary_config, seed=config.seed, on_change=self._canary_changed,
                                   check_interval=config.reload_interval)
        self.scorer = self._make_scorer(config)
        self.safety = SafetyBatcher(self.scorer) if self.scorer is not None else None
        self._models: dict[str, str | None] = {}  # served name -> parent (None for a base model)
        self._models_at = -1e9
        self._models_lock = asyncio.Lock()
        self.session: aiohttp.ClientSession | None = None
        self.peers = PeerForwarder(config.peer_dir, config.worker_index) if config.worker_index is not None else None
        self._rid_prefix = "req-" if config.worker_index is None else f"req-w{config.worker_index}-"
        self.default_limits = Limits(config.rate_limit_rpm, config.rate_limit_tpm)
        # One bucket file for all workers of the pod (rate_limit docstring); memory for a lone gateway.
        self.buckets = Buckets(f"{config.peer_dir}/rate-limits" if config.peer_dir else None)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._waiting = 0

    @staticmethod
    def _make_scorer(config: GatewayConfig):
        if config.safety_scorer == "none":
            return None
        try:
            if config.safety_scorer == "offline" and config.safety_process:
                from .safety_process import ProcessScorer, ScorerProcessError

                try:
                    return ProcessScorer(config.safety_scorer, config.safety_endpoint)
                except ScorerProcessError as exc:
                    raise ValueError(f"--safety-scorer {config.safety_scorer}: the scorer process {exc}") from None
            return make_scorer(config.safety_scorer, config.safety_endpoint)
        except ImportError as exc:
            raise ValueError(f"--safety-scorer {config.safety_scorer}: not available in this build ({exc})") from None

    # ------------------------------------------------------------------ app wiring

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_request_bytes, middlewares=[openai_errors])
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/feedback", self.feedback)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app=None) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout,
                                        sock_read=self.config.upstream_timeout)
        headers = {"Authorization": f"Bearer {self.config.upstream_api_key}"} if self.config.upstream_api_key else None
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers,
                                             auto_decompress=False)

    async def _stop(self, _app=None) -> None:
        if self.session is not None:
            await self.session.close()
        if self.peers is not None:
            await self.peers.close()
        self.buckets.close()
        self.close_logs()

    def close_logs(self) -> None:
        """Score what is pending and flush the payload log to disk (also on SIGTERM). Idempotent."""
        if self.safety is not None:
            self.safety.close()
        if self.payloads is not None:
            self.payloads.close()

    def _count_feedback(self, model: str, adapter: str, rating: int) -> None:
        self.metrics.feedback.labels(model=model, adapter=adapter, rating=str(rating)).inc()

    def _canary_changed(self, routes) -> None:
        self.metrics.clear_canary_weights(routes)
        for name, route in routes.items():
            self.metrics.set_canary_weight(name, route.weight)

    # ------------------------------------------------------------------ helpers

    def _authorize(self, request: web.Request):
        """The caller's key entry (None without auth); 401 when the key is missing or wrong."""
        if self.keys is None:
            return None
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise ApiError(401, "missing API key: send `Authorization: Bearer <key>`", code="invalid_api_key")
        entry = self.keys.lookup(token)
        if entry is None:
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")
        return entry

    def _admit(self, entry, prompt: str, body: dict) -> tuple[bytes, Limits, int]:
        """Charge the key's buckets for this request, or raise 429 with Retry-After."""
        key = entry.key if entry is not None else b"anonymous"
        own = entry.limits if entry is not None and entry.limits is not None else Limits()
        limits = own.or_else(self.default_limits)  # a budget the key's line does not name: the default
        label = key_label(key) if entry is not None else "anonymous"
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or self.config.max_tokens
        charge = estimate_tokens(prompt, int(max_tokens))
        decision = self.buckets.take(key, limits, charge)
        if not decision.allowed:
            self.metrics.rate_limited.labels(key=label, limit=decision.limit).inc()
            per_minute = limits.requests_per_minute if decision.limit == "requests" else limits.tokens_per_minute
            raise ApiError(429, f"Rate limit reached for {decision.limit} per minute: limit {per_minute:g}, "
                                f"this request needs {1 if decision.limit == 'requests' else charge}; "
                                f"retry in {decision.retry_after:.1f} s",
                           code="rate_limit_exceeded", type=decision.limit,
                           headers={"Retry-After": str(max(1, int(decision.retry_after + 0.999)))})
        self.metrics.key_requests.labels(key=label).inc()
        return key, limits, charge

    async def _acquire_slot(self) -> None:
        """Wait for an upstream slot in a bounded queue: 503 with Retry-After when it is full or slow."""
        if not self._slots.locked():
            await self._slots.acquire()
            return
        if self._waiting >= self.config.max_queue:
            self.metrics.overloaded.labels(reason="queue_full").inc()
            raise ApiError(503, f"the gateway is overloaded: {self.config.max_concurrency} requests in flight and "
                                f"{self._waiting} waiting (--max-queue {self.config.max_queue})",
                           code="server_overloaded", headers={"Retry-After": "1"})
        self._waiting += 1
        self.metrics.queue_depth.inc()
        try:
            await asyncio.wait_for(self._slots.acquire(), self.config.queue_timeout)
        except asyncio.TimeoutError:
            self.metrics.overloaded.labels(reason="queue_timeout").inc()
            raise ApiError(503, f"no upstream slot within {self.config.queue_timeout:g} s "
                                f"(--queue-timeout); {self.config.max_concurrency} requests in flight",
                           code="server_overloaded", headers={"Retry-After": "1"}) from None
        finally:
            self._waiting -= 1
            self.metrics.queue_depth.dec()

    async def _read_json(self, request: web.Request):
        length = request.content_length
        if length is not None and length > self.config.max_request_bytes:
            raise ApiError(413, f"request body is {length} bytes, over the limit of {self.config.max_request_bytes}",
                           code="request_too_large")
        try:
            raw = await request.read()  # aiohttp enforces client_max_size for chunked bodies
        except web.HTTPRequestEntityTooLarge:
            # Ours, not aiohttp's: the answer then carries the request id and counts in the metrics.
            raise ApiError(413, f"request body is over the limit of {self.config.max_request_bytes} bytes",
                           code="request_too_large") from None
        try:
            return json.loads(raw)
        except UnicodeDecodeError:
            raise ApiError(400, "request body is not UTF-8 JSON") from None
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"malformed JSON in request body: {exc.msg} at line {exc.lineno} column {exc.colno}",
                           code="invalid_json") from None

    def _upstream_error(self, exc: BaseException) -> ApiError:
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return ApiError(504, f"upstream engine at {self.upstream} did not answer within "
                                 f"{self.config.upstream_timeout:g} s", code="upstream_timeout")
        return ApiError(503, f"upstream engine at {self.upstream} is unavailable: {exc.__class__.__name__}: {exc}",
                        code="upstream_unavailable")

    async def _refresh_models(self) -> None:
        try:
            async with self.session.get(self.upstream + "/v1/models") as resp:
                if resp.status != 200:
                    raise ApiError(503, f"upstream engine answered HTTP {resp.status} on /v1/models",
                                   code="upstream_unavailable")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise self._upstream_error(exc) from None
        models = {}
        for m in body.get("data", []):
            if isinstance(m, dict) and isinstance(m.get("id"), str):
                models[m["id"]] = m.get("parent")
        self._models, self._models_at = models, time.monotonic()

    async def _resolve(self, name: str) -> tuple[str, str, str | None]:
        """(served name to send upstream, base model, adapter or None); 404 when unknown."""
        self.canary.refresh()
        target = self.canary.pick(name)
        now = time.monotonic()
        stale = now - self._models_at > self.config.models_ttl
        missing = target not in self._models and now - self._models_at > MISS_REFRESH_SECONDS
        if stale or missing:
            async with self._models_lock:  # one refresh for a burst of requests
                if time.monotonic() - self._models_at > min(MISS_REFRESH_SECONDS, self.config.models_ttl):
                    await self._refresh_models()
        if target not in self._models:
            what = "model" if target == name else f"model (canary version of {name!r})"
            raise ApiError(404, f"The {what} `{target}` does not exist.", param="model", code="model_not_found")
        parent = self._models[target]
        return (target, parent, target) if parent else (target, target, None)

    async def _score(self, prompt: str, text: str) -> SafetyScore | None:
        if self.safety is None:
            return None
        return await self.safety.score(prompt, text)

    # ------------------------------------------------------------------ endpoints

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            await self._refresh_models()
        except ApiError as exc:
            return exc.response()
        return web.json_response({"status": "ok", "models": sorted(self._models)})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type})

    async def models(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            async with self.session.get(self.upstream + "/v1/models") as resp:
                if resp.status != 200:
                    raise await self._upstream_failure(resp)
                upstream = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise self._upstream_error(exc) from None
        data = [m for m in upstream.get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]
        self._models = {m["id"]: m.get("parent") for m in data}
        self._models_at = time.monotonic()
        self.canary.refresh()
        for alias, route in self.canary.routes.items():
            if alias not in self._models:
                data.append({"id": alias, "object": "model", "owned_by": "kubetune", "root": route.stable,
                             "parent": self._models.get(route.stable)})
        return web.json_response({"object": "list", "data": data})

    async def feedback(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "feedback must be a JSON object {id, rating, comment}")
        rid = body.get("id", body.get("request_id"))
        if not isinstance(rid, str) or not rid:
            raise ApiError(400, "`id` is required: the request id from the x-request-id header", param="id")
        rating = body.get("rating")
        if isinstance(rating, bool) or rating not in (-1, 0, 1):
            raise ApiError(400, f"`rating` must be -1, 0 or 1, got {rating!r}", param="rating")
        comment = body.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise ApiError(400, "`comment` must be a string", param="comment")
        if self.payloads is None:
            raise ApiError(400, "payload logging is off on this gateway (start it with --log-dir): "
                                "feedback cannot be recorded", code="feedback_disabled")
        owner = self.peers.owner(rid, self.config.worker_count) if self.peers is not None else None
        if owner is not None:  # another worker served it and holds its record
            written = await self.peers.forward(owner, rid, rating, comment)
        else:
            written = self.payloads.feedback(rid, rating, comment)
        if written is None:
            raise ApiError(404, f"request {rid!r} is unknown or too old to take feedback", param="id",
                           code="request_not_found")
        return web.json_response({"id": rid, "object": "feedback", "rating": rating, "logged": written})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat", "/v1/chat/completions")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "completion", "/v1/completions")

    # ------------------------------------------------------------------ the request path

    async def _complete(self, request: web.Request, kind: str, path: str) -> web.StreamResponse:
        rid = self._rid_prefix + uuid.uuid4().hex
        out = _Outcome()
        started = out.started
        admitted = None
        slot = False
        try:
            entry = self._authorize(request)
            body = await self._read_json(request)
            requested = validate_request(kind, body, max_tokens_limit=self.config.max_tokens)
            out.prompt = flatten_messages(body["messages"]) if kind == "chat" else flatten_prompt(body["prompt"])
            admitted = self._admit(entry, out.prompt, body)
            await self._acquire_slot()
            slot = True
            self.metrics.inflight.inc()
            target, out.model, adapter = await self._resolve(requested)
            out.adapter = adapter or ""
            stream = bool(body.get("stream"))
            if target != requested:
                body["model"] = target
            if stream:
                client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                body["stream_options"] = dict(body.get("stream_options") or {}, include_usage=True)
                response = await self._stream(request, rid, kind, path, body, out, client_usage)
            else:
                response = await self._unary(rid, kind, path, body, out)
        except ApiError as exc:
            out.status = exc.status
            response = exc.response({"x-request-id": rid})
        except (ConnectionResetError, asyncio.CancelledError):
            out.status = 499  # the client went away mid-stream
            self._account(rid, started, out)
            raise
        finally:
            if slot:
                self._slots.release()
                self.metrics.inflight.dec()
            if admitted is not None:
                key, limits, charge = admitted
                used = (out.prompt_tokens or 0) + (out.completion_tokens or 0) if out.status == 200 else 0
                self.buckets.settle(key, limits, charge, used)
        self._account(rid, started, out)
        return response

    async def _post(self, rid: str, path: str, body: dict) -> aiohttp.ClientResponse:
        try:
            return await self.session.post(self.upstream + path, data=json.dumps(body).encode(),
                                           headers={"Content-Type": "application/json", "X-Request-Id": rid})
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise self._upstream_error(exc) from None

    async def _upstream_failure(self, resp: aiohttp.ClientResponse) -> ApiError:
        raw = await resp.read()
        err = normalise_error_body(resp.status, raw)["error"]
        status = resp.status if resp.status < 500 else 502
        return ApiError(status, err["message"], param=err.get("param"), code=err.get("code"), type=err.get("type"))

    async def _unary(self, rid: str, kind: str, path: str, body: dict, out: _Outcome) -> web.Response:
        resp = await self._post(rid, path, body)
        try:
            if resp.status >= 400:
                raise await self._upstream_failure(resp)
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise self._upstream_error(exc) from None
        finally:
            resp.release()
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ApiError(502, "upstream engine sent a body that is not JSON", code="bad_upstream_response") from None
        answer["id"] = rid
        out.text = response_text(kind, answer)
        usage = answer.get("usage") or {}
        out.prompt_tokens, out.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if self.config.safety_action in ("flag", "block"):  # the answer depends on the score
            out.safety = await self._score(out.prompt, out.text)
        headers = {"x-request-id": rid}
        if out.safety is not None and out.safety.flagged:
            if self.config.safety_action in ("flag", "block"):
                headers["x-kubetune-safety"] = "flagged; categories=" + ",".join(sorted(out.safety.categories))
            if self.config.safety_action == "block":
                _replace_with_refusal(kind, answer)
                headers["x-kubetune-safety"] = "blocked; categories=" + ",".join(sorted(out.safety.categories))
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json", headers=headers)

    async def _stream(self, request: web.Request, rid: str, kind: str, path: str, body: dict, out: _Outcome,
                      client_usage: bool) -> web.StreamResponse:
        resp = await self._post(rid, path, body)
        hold = self.scorer is not None and self.config.safety_action == "block"
        try:
            if resp.status >= 400:
                raise await self._upstream_failure(resp)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                   "x-request-id": rid})
            await response.prepare(request)
            forwarded: list[bytes] = []  # everything sent, parsed once after the stream ended
            held: list[bytes] = []
            upstream_id = b""
            ours = b'"' + rid.encode() + b'"'
            pending = b""
            last = b""  # the closing [DONE], sent only once the request is accounted for
            try:
                # Forward what arrives as soon as it holds whole SSE events: one write per network
                # read, not per line, and never a re-chunked or delayed event. Work here is per read,
                # not per event: the id is swapped in the whole read at once.
                async for piece in resp.content.iter_any():
                    if b"\r" in piece:
                        piece = piece.replace(b"\r\n", b"\n")
                    pending += piece
                    cut = pending.rfind(b"\n\n")
                    if cut < 0:
                        continue
                    complete, pending = pending[:cut + 2], pending[cut + 2:]
                    if not upstream_id:
                        upstream_id = _first_id(complete)
                    if len(upstream_id) > 2:  # b"" (not seen yet) and b'""' (none) swap nothing
                        complete = complete.replace(upstream_id, ours)
                    forwarded.append(complete)
                    if not client_usage and b'"usage"' in complete:
                        complete = _drop_usage_only(complete)  # the usage chunk we asked for on its behalf
                        if not complete:
                            continue
                    out.last_event = time.perf_counter()
                    if out.ttft is None:  # from the request's arrival, as the client sees it
                        out.ttft = out.last_event - out.started
                    if hold:
                        held.append(complete)
                        continue
                    if last:  # something followed [DONE]: keep the order
                        await response.write(last)
                        last = b""
                    if complete.endswith(_DONE_EVENT):
                        complete, last = complete[:-len(_DONE_EVENT)], _DONE_EVENT
                    if complete:
                        await response.write(complete)
                if pending.strip():  # an engine that ended without the closing blank line
                    forwarded.append(pending)
                    if hold:
                        held.append(pending)
                    else:
                        last += pending
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # Headers are gone already: the only honest signal left is an error event.
                err = self._upstream_error(exc)
                out.status = err.status
                await response.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
                await response.write_eof()
                return response
        finally:
            resp.release()
        self._assemble(kind, _event_datas(b"".join(forwarded)), out)
        if hold:
            out.safety = await self._score(out.prompt, out.text)
            if out.safety is not None and out.safety.flagged:
                held = [_refusal_event(kind, rid, body.get("model", "")), b"data: [DONE]\n\n"]
        # Account (metrics, safety, payload record) before the client sees the end, so that
        # feedback sent right after the stream, or a shutdown, finds the request known.
        self._account(rid, out.started, out)
        for event in held:
            await response.write(event)
        if last:
            await response.write(last)
        try:
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client hung up after the last event: it has the whole answer
        return response  # without block, the stream is scored after the fact (in _account)

    def _assemble(self, kind: str, datas: list[bytes], out: _Outcome) -> None:
        parts, events = [], 0
        try:  # one parse for the whole stream; chunk by chunk only if one of them is broken
            chunks = json.loads(b"[" + b",".join(datas) + b"]")
        except ValueError:
            chunks = []
            for data in datas:
                try:
                    chunks.append(json.loads(data))
                except ValueError:
                    continue
        for chunk in chunks:
            if not isinstance(chunk, dict):
                continue
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
                out.completion_tokens = usage.get("completion_tokens", out.completion_tokens)
            piece = chunk_text(kind, chunk)
            if piece:
                parts.append(piece)
                events += 1
        out.text = "".join(parts)
        if out.completion_tokens is None:
            out.completion_tokens = events  # engines stream about one token per event

    def _account(self, rid: str, started: float, out: _Outcome) -> None:
        if out.accounted:
            return
        out.accounted = True
        elapsed = time.perf_counter() - started
        m = self.metrics
        m.request_counter(out.model, out.adapter, out.status).inc()
        if out.status != 200:
            return
        series = m.for_model(out.model, out.adapter)
        series.duration.observe(elapsed)
        series.ttft.observe(out.ttft if out.ttft is not None else elapsed)
        if out.prompt_tokens:
            series.tokens_in.inc(out.prompt_tokens)
        if out.completion_tokens:
            series.tokens_out.inc(out.completion_tokens)
            if out.completion_tokens > 1 and out.last_event is not None and out.ttft is not None:
                series.itl.observe((out.last_event - out.started - out.ttft) / (out.completion_tokens - 1))
        if self.safety is not None and out.safety is None and out.text is not None:
            # Scored on the safety thread; the flag metric and the log record follow from there.
            if self.payloads is not None:
                self.payloads.expect(rid, out.model, out.adapter)  # feedback may come before the score
            self.safety.submit(out.prompt, out.text, lambda score: self._finish(rid, elapsed, out, score))
        else:
            self._finish(rid, elapsed, out, out.safety)

    def _finish(self, rid: str, elapsed: float, out: _Outcome, score: SafetyScore | None) -> None:
        """Safety metric and payload record; runs on the event loop or the safety thread."""
        m = self.metrics
        out.safety = score
        safety = None  # not scored (no scorer, or it failed): unknown, never "not flagged"
        if out.safety is not None:
            safety = {"flagged": out.safety.flagged, "score": out.safety.score, "categories": out.safety.categories}
            m.safety_scored.labels(model=out.model, adapter=out.adapter, flagged="true" if out.safety.flagged else "false").inc()
            if out.safety.flagged:
                for category in out.safety.categories or {"unknown": 1.0}:
                    m.safety_flags.labels(model=out.model, category=category).inc()
        if self.payloads is not None:
            self.payloads.record({
                "id": rid, "time": rfc3339(time.time()), "model": out.model, "adapter": out.adapter or None,
                "prompt": out.prompt, "response": out.text or "", "promptTokens": out.prompt_tokens,
                "completionTokens": out.completion_tokens, "latencyMs": round(elapsed * 1000, 3),
                "safety": safety, "feedback": None,
            })


_DONE_EVENT = b"data: [DONE]\n\n"


def _first_id(events: bytes) -> bytes:
    """The upstream's response id, quoted as it appears in the JSON (b'""' when it has none)."""
    for data in _event_datas(events):
        try:
            return b'"' + json.loads(data).get("id", "").encode() + b'"'
        except (ValueError, AttributeError, TypeError):
            return b'""'
    return b""  # no data event yet: look again in the next read


def _event_datas(events: bytes) -> list[bytes]:
    """The `data:` payloads of whole SSE events, without `[DONE]`."""
    out = []
    for event in events.split(b"\n\n"):
        if event.startswith(b"data:"):
            data = event[5:].strip()
            if data and data != b"[DONE]":
                out.append(data)
    return out


def _drop_usage_only(events: bytes) -> bytes:
    kept = [e for e in events.split(b"\n\n")[:-1]
            if not (e.startswith(b"data:") and b'"usage"' in e and _is_usage_only(e[5:].strip()))]
    return b"".join(e + b"\n\n" for e in kept)


def _is_usage_only(data: bytes) -> bool:
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    return isinstance(chunk, dict) and not chunk.get("choices") and isinstance(chunk.get("usage"), dict)


def _replace_with_refusal(kind: str, answer: dict) -> None:
    for choice in answer.get("choices") or []:
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": REFUSAL_TEXT}
        else:
            choice["text"] = REFUSAL_TEXT
        choice["finish_reason"] = "content_filter"


def _refusal_event(kind: str, rid: str, model: str) -> bytes:
    if kind == "chat":
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": REFUSAL_TEXT},
                              "finish_reason": "content_filter"}]}
    else:
        chunk = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                 "choices": [{"index": 0, "text": REFUSAL_TEXT, "finish_reason": "content_filter"}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"
