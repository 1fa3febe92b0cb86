"""Benchmark: N FineTuneJobs applied at once against the Kubernetes emulator.

Measures, in one run on the same machine:
- create -> RayJob created, per job (p50, p95): POST of the FineTuneJob returned -> the
  RayJob's ADDED event arrives on a watch;
- the time until every job reports phase Provisioning (the bench plays KubeRay: each new
  RayJob is PATCHed to jobDeploymentStatus=Initializing, as KubeRay would);
- the operator's peak RSS (VmHWM of the real `kubetune operator` process);
- the floor, not a peer: the emulator's own latency for one API create (p50, p95 of plain
  ConfigMap creates). No operator can be faster than one round trip; the ratio says how many
  round trips' worth of time the operator's work (a watch event, a reconcile, the RayJob and
  its ConfigMap created, status written) adds. There is no peer operator to run here: the
  comparison with KubeRay or Kubeflow Trainer is what a user of them sees from `kubectl apply`;
- the CPU seconds each process (emulator, operator, the bench's clients) spent while the
  jobs ran, so a bottleneck shows as a process near 100% of a core, and the load average.

Before the measured burst, one warm-up job in another namespace goes through (kopf answers
its liveness probe before its watches have listed everything). `--profile-operator FILE`
runs the operator under cProfile with a CPU-time clock (meaningful on a busy machine).

The emulator runs in its own process (tests/harness), the operator is the real CLI
(`python -m kubetune operator --standalone`), so neither shares a GIL with the clients.

    .venv/bin/python bench/operator_scale.py [--jobs 500] [--quick] [--json out/bench/operator_scale.json]

Writes every job's create -> RayJob latency and the floor's to the JSON file (the report's CDF).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NS = "bench"
WARMUP_NS = "bench-warmup"


PROFILE_WRAPPER = """
import cProfile, signal, sys, time
out = sys.argv[1]
sys.argv = ["kubetune", *sys.argv[2:]]
profile = cProfile.Profile(time.process_time)
from kubetune.cli import main


def _dump_burst(*_):  # SIGUSR1 from the bench when the last RayJob arrived: the burst alone
    profile.disable()
    profile.dump_stats(out + ".burst")
    profile.enable()


signal.signal(signal.SIGUSR1, _dump_burst)
profile.enable()
try:
    main()
finally:
    profile.disable()
    profile.dump_stats(out)
"""


def serve_emulator(workdir: str) -> None:
    """Child process: run the emulator, print its kubeconfig path, stop when stdin closes."""
    import gc

    from tests.harness.server import RunningEmulator

    # The emulator stands in for an API server, which runs on other machines: its cyclic
    # collector's pauses (it keeps every object and its watch history) are not the operator's.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    with RunningEmulator(Path(workdir)) as emulator:
        print(json.dumps({"url": emulator.url, "kubeconfig": str(emulator.kubeconfig)}), flush=True)
        sys.stdin.read()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc), to tell who is busy."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_live(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited with {process.returncode} during start-up")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the operator's liveness probe {url} did not answer within {timeout}s")


def _clean(workdir: str) -> None:
    """Remove the run's folder unless the run failed (its operator.log tells why)."""
    import shutil

    log = (Path(workdir) / "operator.log").read_text(errors="replace")
    if "Traceback" not in log:
        shutil.rmtree(workdir, ignore_errors=True)


def warm_up(http, process: subprocess.Popen, timeout: float = 120) -> None:
    """One job in another namespace, until the operator wrote its status.

    kopf answers its liveness probe before its watches have listed everything; a burst that
    arrives then meets kopf's start-up indexing barrier, which is start-up, not throughput.
    """
    http.post("/api/v1/namespaces", json={"metadata": {"name": WARMUP_NS}}).raise_for_status()
    job = manifest(0)
    job["metadata"]["namespace"] = WARMUP_NS
    http.post(f"/apis/kubetune.io/v1alpha1/namespaces/{WARMUP_NS}/finetunejobs", json=job).raise_for_status()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited with {process.returncode} during the warm-up")
        body = http.get(f"/apis/kubetune.io/v1alpha1/namespaces/{WARMUP_NS}/finetunejobs/job-0000").json()
        if (body.get("status") or {}).get("phase"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the operator did not reconcile the warm-up job within {timeout}s")


class LeanPoster:
    """POSTs over one keep-alive `http.client` connection per thread.

    The bench's clients are the load generator, not what is measured, and they share the
    2 cores with the emulator and the operator: httpx costs about 3x the CPU per request.
    """

    def __init__(self, url: str):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.local = threading.local()

    def post(self, path: str, body: dict) -> None:
        import http.client

        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("POST", path, body=orjson.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"POST {path}: {resp.status} {answer[:300]!r}")


def manifest(i: int) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"job-{i:04d}", "namespace": NS},
        "spec": {
            "baseModel": {"uri": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "datasets": [{"name": "d", "uri": "pvc://datasets/train.jsonl", "format": "chat"}],
            "output": {"uri": f"pvc://models/job-{i:04d}"},
            "resources": {"workers": 2, "gpusPerWorker": 1},
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--baseline-requests", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile-operator", metavar="FILE",
                        help="run the operator under cProfile (CPU time) and write the stats to FILE "
                             "(and those until the last RayJob arrived to FILE.burst)")
    parser.add_argument("--py-spy", metavar="FILE",
                        help="sample the operator with py-spy (low overhead) from the first create until the last "
                             "RayJob arrived; FILE gets py-spy's raw (collapsed stacks) output")
    parser.add_argument("--client", choices=("lean", "httpx"), default="lean",
                        help="how the 16 creating threads send: one keep-alive http.client connection each "
                             "(lean: about 1,000 creates/s here) or httpx (about 3x its CPU per request: about "
                             "330 creates/s on 2 cores, still far faster than kubectl apply or a GitOps sync)")
    parser.add_argument("--pin", action="store_true",
                        help="operator on CPU 1, emulator and bench clients on CPU 0 (as on a cluster, where the "
                             "API server does not share the operator's CPU)")
    parser.add_argument("--quick", action="store_true", help="make bench sizes: --jobs 100 --baseline-requests 100")
    parser.add_argument("--json", default="out/bench/operator_scale.json", help="where to write the figures")
    parser.add_argument("--serve-emulator", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.baseline_requests = 100, 100
    if args.serve_emulator:
        serve_emulator(args.serve_emulator)
        return 0

    import httpx

    pin_operator = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least 2 CPUs")
        pin_operator = {cpus[1]}
        os.sched_setaffinity(0, {cpus[0]})  # the bench and (inherited) the emulator

    workdir = tempfile.mkdtemp(prefix="kubetune-bench-")
    env = dict(os.environ)  # no PYTHONPATH=REPO: operator/ would shadow the stdlib module
    emu = subprocess.Popen([sys.executable, __file__, "--serve-emulator", workdir],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    operator = None
    try:
        info = json.loads(emu.stdout.readline())
        url = info["url"]
        http = httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=32))
        http.post("/api/v1/namespaces", json={"metadata": {"name": NS}}).raise_for_status()

        # Baseline: the emulator's own latency for one create, through the same lean client.
        poster = LeanPoster(url)
        base = []
        for i in range(args.baseline_requests):
            start = time.perf_counter()
            poster.post(f"/api/v1/namespaces/{NS}/configmaps", {"metadata": {"name": f"base-{i}"}})
            base.append(time.perf_counter() - start)

        op_env = {**env, "KUBECONFIG": info["kubeconfig"], "KUBETUNE_LOG_FORMAT": "plain",
                  "KUBETUNE_METRICS_PORT": "0", "KUBETUNE_RESYNC_SECONDS": "30"}
        probe = f"http://127.0.0.1:{free_port()}/healthz"
        command = ["-m", "kubetune", "operator", "--standalone", "--liveness", probe]
        if args.profile_operator:  # CPU-time profile of the operator (robust on a busy machine)
            command = ["-c", PROFILE_WRAPPER, os.path.abspath(args.profile_operator), *command[2:]]
        operator = subprocess.Popen([sys.executable, *command],
                                    preexec_fn=(lambda: os.sched_setaffinity(0, pin_operator)) if pin_operator else None,
                                    env=op_env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(Path(workdir) / "operator.log", "w"))

        # Watch RayJobs: record arrival, and play KubeRay (Initializing) for each new one. The
        # status patches go out from another thread, so they never delay the next arrival.
        arrived: dict[str, float] = {}
        at_last_rayjob: dict[str, float] = {}
        ready = threading.Event()
        to_initialize: queue.SimpleQueue = queue.SimpleQueue()

        def kuberay() -> None:
            client = httpx.Client(base_url=url, timeout=None)
            with client.stream("GET", f"/apis/ray.io/v1/namespaces/{NS}/rayjobs", params={"watch": "true"}) as resp:
                ready.set()
                for line in resp.iter_lines():
                    if not line:
                        continue
                    event = orjson.loads(line)
                    name = event["object"]["metadata"]["name"]
                    if event["type"] == "ADDED" and name not in arrived:
                        arrived[name] = time.perf_counter()
                        to_initialize.put(name)
                        if len(arrived) >= args.jobs:
                            at_last_rayjob.update(operator=cpu_seconds(operator.pid), emulator=cpu_seconds(emu.pid),
                                                  wall=time.perf_counter())
                            if args.profile_operator:
                                os.kill(operator.pid, signal.SIGUSR1)
                            return

        def kuberay_initializes() -> None:
            client = httpx.Client(base_url=url, timeout=None)
            while (name := to_initialize.get()) is not None:
                client.patch(f"/apis/ray.io/v1/namespaces/{NS}/rayjobs/{name}/status",
                             json={"status": {"jobDeploymentStatus": "Initializing"}},
                             headers={"Content-Type": "application/merge-patch+json"})

        # Watch FineTuneJobs (a watch, not polling lists, so the bench adds no load of its own).
        phases: set[str] = set()
        all_provisioning = threading.Event()
        ftj_ready = threading.Event()

        def follow_phases() -> None:
            client = httpx.Client(base_url=url, timeout=None)
            with client.stream("GET", f"/apis/kubetune.io/v1alpha1/namespaces/{NS}/finetunejobs", params={"watch": "true"}) as resp:
                ftj_ready.set()
                for line in resp.iter_lines():
                    if not line:
                        continue
                    obj = orjson.loads(line)["object"]
                    if (obj.get("status") or {}).get("phase") == "Provisioning":
                        phases.add(obj["metadata"]["name"])
                        if len(phases) >= args.jobs:
                            all_provisioning.set()
                            return

        watcher = threading.Thread(target=kuberay, daemon=True)
        watcher.start()
        threading.Thread(target=kuberay_initializes, daemon=True).start()
        threading.Thread(target=follow_phases, daemon=True).start()
        ready.wait(10)
        ftj_ready.wait(10)
        wait_until_live(probe, operator)  # start-up (imports, login, first listing) is not measured
        warm_up(http, operator)

        created: dict[str, float] = {}

        def create(i: int) -> None:
            path = f"/apis/kubetune.io/v1alpha1/namespaces/{NS}/finetunejobs"
            if args.client == "httpx":
                http.post(path, json=manifest(i)).raise_for_status()
            else:
                poster.post(path, manifest(i))
            created[f"job-{i:04d}-train"] = time.perf_counter()

        spy = None
        if args.py_spy:
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(operator.pid),
                                    "--rate", "250", "--format", "raw", "--output", args.py_spy],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        load_before = os.getloadavg()[0]
        from bench import results as bench_results

        about = bench_results.machine()
        cpu0 = {"emulator": cpu_seconds(emu.pid), "operator": cpu_seconds(operator.pid), "bench": time.process_time()}
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(args.jobs)))
        t_created = time.perf_counter() - t0

        if spy is not None:
            watcher.join(args.timeout)
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        all_provisioning.wait(args.timeout)
        to_initialize.put(None)
        provisioning = len(phases)
        t_all = time.perf_counter() - t0
        cpu = {"emulator": cpu_seconds(emu.pid) - cpu0["emulator"], "operator": cpu_seconds(operator.pid) - cpu0["operator"],
               "bench": time.process_time() - cpu0["bench"]}
        rss = peak_rss_mb(operator.pid)

        latencies = [arrived[n] - created[n] for n in created if n in arrived]
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        b50, b95 = percentile(base, 50), percentile(base, 95)
        if pin_operator:
            print(f"pinned: operator on CPU {sorted(pin_operator)[0]}, emulator and bench clients on CPU "
                  f"{sorted(os.sched_getaffinity(0))[0]}")
        print(f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
              "(wall-clock figures mean little above ~2.5 on 2 cores; the CPU seconds below still do)")
        print(f"jobs: {args.jobs} (created in {t_created:.2f} s by the {args.client} client); RayJobs seen: {len(latencies)}; "
              f"Provisioning: {provisioning}/{args.jobs}")
        print(f"create -> RayJob: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
        print(f"all Provisioning after {t_all:.1f} s")
        print(f"operator peak RSS: {rss:.0f} MB")
        print("CPU seconds while the jobs ran (wall {:.1f} s): ".format(t_all)
              + ", ".join(f"{who} {sec:.1f} s ({sec / t_all:.0%} of a core)" for who, sec in cpu.items()))
        if at_last_rayjob:
            print(f"until the last RayJob ({at_last_rayjob['wall'] - t0:.1f} s): operator "
                  f"{at_last_rayjob['operator'] - cpu0['operator']:.1f} s CPU, emulator "
                  f"{at_last_rayjob['emulator'] - cpu0['emulator']:.1f} s CPU (the rest came after: deferred bookkeeping)")
        print("CPU per job: " + ", ".join(f"{who} {sec / args.jobs * 1000:.1f} ms" for who, sec in cpu.items())
              + "; a process near 100% of a core is the bottleneck")
        print(f"floor (one API create on the emulator, not a peer): p50 {b50 * 1000:.1f} ms, p95 {b95 * 1000:.1f} ms")
        print(f"ratio p95(create -> RayJob) / p95(one API create): {p95 / b95:.1f}x")
        ok = len(latencies) == args.jobs and provisioning >= args.jobs
        bench_results.write(args.json, "operator_scale", about, {
            "jobs": args.jobs, "client": args.client, "complete": ok,
            "createToRayJobSeconds": sorted(latencies), "floorCreateSeconds": sorted(base),
            "p50": p50, "p95": p95, "floorP50": b50, "floorP95": b95, "allProvisioningSeconds": t_all,
            "operatorPeakRssMiB": rss, "cpuSeconds": cpu})
        if not ok:
            print(f"incomplete: the operator's log is {Path(workdir) / 'operator.log'}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
        if emu.stdin:
            emu.stdin.close()
        try:
            emu.wait(20)
        except subprocess.TimeoutExpired:
            emu.kill()
        if sys.exc_info()[0] is None and (Path(workdir) / "operator.log").exists():
            _clean(workdir)


if __name__ == "__main__":
    sys.exit(main())
