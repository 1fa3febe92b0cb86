"""Gateway overhead: the same streaming load against a fast fake engine directly and through
the gateway (payload logging at sample rate 1 and offline safety scoring on), in one run.

    .venv/bin/python bench/gateway_overhead.py [--clients 64] [--requests 10] [--chunks 16]
        [--chunk-delay-ms 5] [--rounds 2] [--engine-model DIR] [--skip-engine]
        [--pin] [--gateway-workers N] [--gateway-cpus N] [--safety-in-gateway]

`--pin` gives the fake engine, the gateway and the load generator CPUs of their own (as
containers with CPU requests); `--gateway-workers N` runs `kubetune serve --workers N` on
`--gateway-cpus` CPUs (default N). The gateway's CPU is that of its whole process tree
(supervisor, workers, safety scorer processes), also printed by role.

Prints added p50/p99 latency (whole stream) and TTFT, and the throughput ratio
(through-gateway / direct), then the local engine's tokens/s on the quickstart model
(SmolLM2 if an imported folder exists, else the tiny test model) against plain
`model.generate` on the same model. The engine, the gateway and the load generator are three
processes, as in a pod; on a 2-core machine they compete for the CPU, so the figures are an
upper bound of the overhead. Each process's CPU time is read from /proc: the gateway's CPU per
streamed request is the figure that does not depend on the machine's load, and the script
prints the throughput ratio that CPU share allows when all three share saturated cores.
`KUBETUNE_BIN=/path/to/kubetune` measures another build of the gateway (an A/B run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# KUBETUNE_BIN: another `kubetune` build to measure (an A/B run against an older gateway).
KUBETUNE = os.environ.get("KUBETUNE_BIN") or str(Path(sys.executable).with_name("kubetune"))
SMOLLM2_CANDIDATES = [
    Path(os.environ.get("KUBETUNE_MODEL_CACHE", "/models")) / "HuggingFaceTB" / "SmolLM2-135M-Instruct",
    REPO / "out" / "models" / "SmolLM2-135M-Instruct",
    REPO / "out" / "quickstart" / "base-model",
    REPO / "out" / "quickstart" / "models" / "SmolLM2-135M-Instruct",
]


# ----------------------------------------------------------------------------- the fake engine


def run_fake_engine(port: int, chunks: int, delay_ms: float) -> None:
    """An OpenAI-style engine that streams canned SSE as fast as asked; runs until killed."""
    from aiohttp import web

    words = [f"word{i} " for i in range(chunks)]

    def event(i: int, rid: str, model: str) -> bytes:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": model,
                 "choices": [{"index": 0, "delta": {"content": words[i]}, "finish_reason": None}]}
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "base", "object": "model", "parent": None}]})

    async def chat(request):
        body = await request.json()
        rid = "chatcmpl-" + request.headers.get("X-Request-Id", "direct")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(chunks):
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            await resp.write(event(i, rid, body["model"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                     "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": chunks,
                                              "total_tokens": 8 + chunks}}
            await resp.write(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


# ----------------------------------------------------------------------------- load


async def one_request(session, url: str, body: bytes, headers: dict) -> tuple[float, float]:
    start = time.perf_counter()
    ttft = None
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
        async for chunk in resp.content.iter_any():
            if ttft is None:
                ttft = time.perf_counter() - start
            if chunk.endswith(b"data: [DONE]\n\n"):
                break
    return time.perf_counter() - start, ttft or 0.0


async def load(base: str, clients: int, requests: int) -> dict:
    import aiohttp

    url = base + "/v1/chat/completions"
    body = json.dumps({"model": "base", "stream": True, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Write me a short poem about containers."}]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one_request(session, url, body, headers) for _ in range(clients)))  # warm-up

        async def client():
            return [await one_request(session, url, body, headers) for _ in range(requests)]

        start, cpu_start = time.perf_counter(), time.process_time()
        results = await asyncio.gather(*(client() for _ in range(clients)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    latencies = sorted(x[0] for r in results for x in r)
    ttfts = sorted(x[1] for r in results for x in r)
    return {"latencies": latencies, "ttfts": ttfts, "wall": wall, "count": len(latencies), "cpu": cpu}


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def wait_ready_line(proc: subprocess.Popen) -> None:
    for line in proc.stdout:
        if "gateway on http" in line:
            return
    raise RuntimeError(f"the gateway exited with code {proc.wait()} before it was ready")


def wait_http(url: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")
            time.sleep(0.3)


def _own_cpu_seconds(pid: int, which: str) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone meanwhile
    user, system = int(fields[11]), int(fields[12])
    ticks = {"user": user, "system": system, "both": user + system}[which]
    return ticks / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                out.append(child)
                todo.append(child)
    return out


def _kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    if b"spawn_main" in cmd or b"resource_tracker" in cmd:
        return "safety scorer"
    return "workers" if b"worker_main" in cmd else "main process" if b"serve" in cmd else "other"


def cpu_by_kind(pid: int) -> dict[str, float]:
    """CPU seconds of a process tree by role: the main process (the gateway itself, or the
    supervisor with --gateway-workers > 1), the workers, the safety scorer processes."""
    out: dict[str, float] = {}
    for p in [pid, *_descendants(pid)]:
        kind = _kind(p)
        out[kind] = out.get(kind, 0.0) + _own_cpu_seconds(p, "both")
    return out


def cpu_seconds(pid: int, which: str = "both") -> float:
    """User and/or system CPU time of a process and every process under it (Linux /proc):
    the gateway's workers, supervisor and safety scorer processes all count as the gateway."""
    return sum(_own_cpu_seconds(p, which) for p in [pid, *_descendants(pid)])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_plan(args) -> dict[str, set[int] | None]:
    """With --pin, each process gets CPUs of its own, as containers with CPU requests would."""
    if not args.pin:
        return {"engine": None, "gateway": None, "client": None}
    available = sorted(os.sched_getaffinity(0))
    gateway_cpus = args.gateway_cpus or args.gateway_workers
    need = 2 + gateway_cpus
    if len(available) < need:
        raise SystemExit(f"--pin needs {need} CPUs (engine 1, gateway {gateway_cpus}, load generator 1); "
                         f"this process may use {len(available)}")
    return {"engine": {available[0]}, "gateway": set(available[1:1 + gateway_cpus]),
            "client": {available[1 + gateway_cpus]}}


def gateway_extra_args(args) -> list[str]:
    """Only what differs from the defaults, so KUBETUNE_BIN may name an older build."""
    extra = []
    if args.gateway_workers > 1:
        extra += ["--workers", str(args.gateway_workers)]
    if args.safety_in_gateway:
        extra += ["--no-safety-process"]
    return extra


def pinned(cpus: set[int] | None):
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def gateway_overhead(args) -> dict:
    plan = cpu_plan(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "keys").write_text("bench-key\n")
        engine_port, gateway_port = free_port(), free_port()
        procs = []
        try:
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--role", "engine", "--port", str(engine_port), "--chunks", str(args.chunks),
                 "--chunk-delay-ms", str(args.chunk_delay_ms)], cwd=tmp, preexec_fn=pinned(plan["engine"])))
            wait_http(f"http://127.0.0.1:{engine_port}/v1/models")
            procs.append(subprocess.Popen(
                [KUBETUNE, "serve", "--gateway-only", "--upstream", f"http://127.0.0.1:{engine_port}",
                 "--port", str(gateway_port), "--api-keys", str(tmp / "keys"), "--log-dir", str(tmp / "logs"),
                 "--sample-rate", str(args.sample_rate), "--safety-scorer", args.safety_scorer, "--safety-action",
                 "flag", "--log-level", "WARNING", *gateway_extra_args(args)], cwd=tmp, stdout=subprocess.PIPE,
                text=True, preexec_fn=pinned(plan["gateway"])))
            wait_ready_line(procs[-1])  # with workers: all of them listen by then
            wait_http(f"http://127.0.0.1:{gateway_port}/healthz")
            if plan["client"] is not None:
                os.sched_setaffinity(0, plan["client"])
            runs = {"direct": [], "gateway": []}
            gateway_cpu = gateway_user = engine_direct_cpu = engine_gateway_cpu = 0.0
            by_kind: dict[str, float] = {}
            loads = [os.getloadavg()[0]]
            for _ in range(args.rounds):  # interleaved, so background load hits both alike
                for name, port in (("direct", engine_port), ("gateway", gateway_port)):
                    before, before_user = cpu_seconds(procs[1].pid), cpu_seconds(procs[1].pid, "user")
                    kinds_before = cpu_by_kind(procs[1].pid)
                    engine_before = cpu_seconds(procs[0].pid)
                    runs[name].append(asyncio.run(load(f"http://127.0.0.1:{port}", args.clients, args.requests)))
                    if name == "gateway":
                        gateway_cpu += cpu_seconds(procs[1].pid) - before
                        gateway_user += cpu_seconds(procs[1].pid, "user") - before_user
                        for kind, sec in cpu_by_kind(procs[1].pid).items():
                            by_kind[kind] = by_kind.get(kind, 0.0) + sec - kinds_before.get(kind, 0.0)
                        engine_gateway_cpu += cpu_seconds(procs[0].pid) - engine_before
                    else:
                        engine_direct_cpu += cpu_seconds(procs[0].pid) - engine_before
                    loads.append(os.getloadavg()[0])
            # The safety scorer lingers up to 1 s to fill a batch: wait for its last batch,
            # whose CPU belongs to the gateway's work.
            tail, tail_user = cpu_seconds(procs[1].pid), cpu_seconds(procs[1].pid, "user")
            kinds_before = cpu_by_kind(procs[1].pid)
            time.sleep(2.0)
            gateway_cpu += cpu_seconds(procs[1].pid) - tail
            gateway_user += cpu_seconds(procs[1].pid, "user") - tail_user
            for kind, sec in cpu_by_kind(procs[1].pid).items():
                by_kind[kind] = by_kind.get(kind, 0.0) + sec - kinds_before.get(kind, 0.0)
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        # One log per worker (logs/worker-<i>/payloads.jsonl) with --gateway-workers > 1.
        logged = sum(sum(1 for _ in open(f)) for f in (tmp / "logs").rglob("payloads.jsonl*"))

    def summary(name):
        lat = sorted(x for r in runs[name] for x in r["latencies"])
        ttft = sorted(x for r in runs[name] for x in r["ttfts"])
        rps = sum(r["count"] for r in runs[name]) / sum(r["wall"] for r in runs[name])
        return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "ttft50": pct(ttft, 0.5), "ttft99": pct(ttft, 0.99),
                "rps": rps, "n": len(lat)}

    d, g = summary("direct"), summary("gateway")
    print(f"gateway overhead: {args.clients} concurrent streaming clients x {args.requests} requests x {args.rounds} "
          f"rounds, {args.chunks} SSE chunks per answer, {args.chunk_delay_ms} ms between chunks; payload log "
          f"sample rate {args.sample_rate} ({logged} records written), {args.safety_scorer} safety scorer "
          f"({'in the gateway process' if args.safety_in_gateway else 'in a child process'}), flag action; "
          f"{args.gateway_workers} gateway worker(s)")
    print(f"{'':10}{'p50 ms':>10}{'p99 ms':>10}{'TTFT p50':>10}{'TTFT p99':>10}{'req/s':>10}")
    for name, s in (("direct", d), ("gateway", g)):
        print(f"{name:10}{s['p50'] * 1e3:10.2f}{s['p99'] * 1e3:10.2f}{s['ttft50'] * 1e3:10.2f}{s['ttft99'] * 1e3:10.2f}"
              f"{s['rps']:10.1f}")
    pins = ", ".join(f"{k} on CPU {sorted(v)}" for k, v in plan.items() if v is not None) or "not pinned"
    print(f"machine: {os.cpu_count()} CPUs ({pins}), load average (1 min) {min(loads):.1f}-{max(loads):.1f} during the run")
    served = sum(r["count"] + args.clients for r in runs["gateway"])
    per_request, user_per_request = gateway_cpu / served, gateway_user / served
    print(f"gateway CPU per streamed request (all its processes): {per_request * 1e3:.2f} ms, of which user (Python) "
          f"{user_per_request * 1e3:.2f} ms and kernel {1e3 * (per_request - user_per_request):.2f} ms "
          f"({per_request * 1e6 / (args.chunks + 2):.0f} us per SSE event); about {1 / per_request:.0f} "
          f"streamed requests/s per core; the fake engine itself spends "
          f"{1e3 * engine_direct_cpu / sum(r['count'] + args.clients for r in runs['direct']):.2f} ms per request")
    print("gateway CPU per streamed request by process: " + ", ".join(
        f"{kind} {1e3 * sec / served:.2f} ms" for kind, sec in sorted(by_kind.items()) if sec > 0))
    engine_per_request = engine_gateway_cpu / served
    client_per_request = sum(r["cpu"] for r in runs["direct"]) / sum(r["count"] for r in runs["direct"])
    rest = engine_per_request + client_per_request
    print(f"CPU per request: gateway {per_request * 1e3:.2f} ms, fake engine {engine_per_request * 1e3:.2f} ms, "
          f"load generator {client_per_request * 1e3:.2f} ms: when all three share the same saturated cores, "
          f"through-gateway throughput can be at most {rest / (rest + per_request):.2f} of direct")
    print(f"added p50 {1e3 * (g['p50'] - d['p50']):.2f} ms (target <= 1 ms), added p99 {1e3 * (g['p99'] - d['p99']):.2f} ms, "
          f"added TTFT p50 {1e3 * (g['ttft50'] - d['ttft50']):.2f} ms; throughput ratio gateway/direct "
          f"{g['rps'] / d['rps']:.3f} (target >= 0.95)")
    quantiles = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
    whole = {name: sorted(x for r in runs[name] for x in r["latencies"]) for name in runs}
    return {"settings": {"clients": args.clients, "requests": args.requests, "rounds": args.rounds,
                         "chunks": args.chunks, "chunkDelayMs": args.chunk_delay_ms, "sampleRate": args.sample_rate,
                         "gatewayWorkers": args.gateway_workers, "safetyScorer": args.safety_scorer},
            "direct": d, "gateway": g, "loadAverage": [min(loads), max(loads)],
            "latencyByQuantile": [{"q": q, "direct": pct(whole["direct"], q), "gateway": pct(whole["gateway"], q)}
                                  for q in quantiles],
            "gatewayCpuPerRequestSeconds": per_request, "throughputRatio": g["rps"] / d["rps"],
            "addedP50Seconds": g["p50"] - d["p50"], "addedP99Seconds": g["p99"] - d["p99"]}


# ----------------------------------------------------------------------------- local engine tokens/s


def find_model(explicit: str | None) -> tuple[Path, str]:
    if explicit:
        return Path(explicit), Path(explicit).name
    for candidate in SMOLLM2_CANDIDATES:
        if (candidate / "config.json").is_file():
            return candidate, "SmolLM2-135M-Instruct"
    sys.path.insert(0, str(REPO))
    from tests.fixtures.tiny_model import build_tiny_model

    print("SmolLM2 folder not found (kubetune models import-gguf --output out/models/SmolLM2-135M-Instruct): "
          "measuring the tiny test model instead")
    return build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"), "tiny test model (hidden 64, 2 layers)"


def engine_tokens_per_second(args) -> dict:
    import torch

    from kubetune.serving.engine_local import GenerationJob, LocalEngine

    path, label = find_model(args.engine_model)
    engine = LocalEngine(path, served_name="bench", threads=args.engine_threads)
    messages = [{"role": "user", "content": "Explain in a few sentences what Kubernetes does."}]
    text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    new = args.engine_tokens

    def ours() -> tuple[int, float]:
        job = GenerationJob("chat", "bench", ids, new, 0.0, 1.0, None, [])
        start = time.perf_counter()
        result = engine._generate(job, on_text=lambda piece: None)
        return result.completion_tokens, time.perf_counter() - start

    def plain() -> tuple[int, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = engine.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                        dtype=torch.long), max_new_tokens=new, do_sample=False,
                                        pad_token_id=engine.pad_id, eos_token_id=engine.eos_ids)
        return out.shape[1] - len(ids), time.perf_counter() - start

    ours(), plain()  # warm-up
    rates = {"engine": [], "plain": []}
    for _ in range(args.engine_runs):
        for name, fn in (("engine", ours), ("plain", plain)):
            tokens, seconds = fn()
            rates[name].append(tokens / seconds)
    e, p = statistics.median(rates["engine"]), statistics.median(rates["plain"])
    print(f"local engine on {label}: {e:.1f} tokens/s streamed (greedy, {new} new tokens, batch 1, "
          f"{torch.get_num_threads()} threads); plain model.generate {p:.1f} tokens/s; ratio {e / p:.3f}")
    return {"model": label, "engineTokensPerSecond": e, "plainTokensPerSecond": p, "ratio": e / p,
            "newTokens": new, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "engine"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=10, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=16, help="SSE chunks per answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0, help="fake engine's pause between chunks")
    parser.add_argument("--sample-rate", type=float, default=1.0, help="gateway payload log sample rate")
    parser.add_argument("--pin", action="store_true",
                        help="give engine, gateway and load generator CPUs of their own (needs 2 + --gateway-cpus)")
    parser.add_argument("--gateway-cpus", type=int, help="CPUs for the gateway with --pin (default: --gateway-workers)")
    parser.add_argument("--gateway-workers", type=int, default=1,
                        help="gateway processes on the port (`kubetune serve --workers N`); default 1")
    parser.add_argument("--safety-in-gateway", action="store_true",
                        help="score on the gateway's own thread (--no-safety-process), as before the scorer process")
    parser.add_argument("--safety-scorer", default="offline", choices=["offline", "none"])
    parser.add_argument("--engine-model", help="model folder for the tokens/s figure (default: SmolLM2 or tiny)")
    parser.add_argument("--engine-tokens", type=int, default=64)
    parser.add_argument("--engine-runs", type=int, default=3)
    parser.add_argument("--engine-threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-engine", action="store_true", help="only the gateway overhead")
    parser.add_argument("--skip-gateway", action="store_true", help="only the local engine tokens/s")
    parser.add_argument("--quick", action="store_true", help="make bench sizes: --clients 32 --requests 5 "
                                                            "--rounds 1 --engine-runs 1")
    parser.add_argument("--json", default="out/bench/gateway_overhead.json", help="where to write the figures")
    args = parser.parse_args()
    if args.role == "engine":
        run_fake_engine(args.port, args.chunks, args.chunk_delay_ms)
        return
    if args.quick:
        args.clients, args.requests, args.rounds, args.engine_runs = 32, 5, 1, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.path.append(str(REPO))
    from bench import results as bench_results

    about, report = bench_results.machine(), {}
    if not args.skip_gateway:
        report["gateway"] = gateway_overhead(args)
    if not args.skip_engine:
        report["engine"] = engine_tokens_per_second(args)
    bench_results.write(args.json, "gateway_overhead", about, report)


if __name__ == "__main__":
    main()
