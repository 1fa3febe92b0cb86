"""`kubetune serve`: the gateway over the local CPU engine, or over any upstream engine.

    kubetune serve --model DIR [--adapter NAME=DIR ...] [--port 8080]
    kubetune serve --gateway-only --upstream http://vllm:8000 [--api-keys FILE] [--log-dir DIR]

Every gateway flag has an environment variable (KUBETUNE_GATEWAY_<FLAG>) so the operator can
configure the gateway container without building command lines.
"""

from __future__ import annotations

import argparse
import os
import sys

ENV_PREFIX = "KUBETUNE_GATEWAY_"
# Environment defaults stay strings: argparse converts them with the flag's type when `serve`
# runs, so a bad value is an error about that flag, never a crash of every other subcommand.


def _env(name: str, default=None):
    return os.environ.get(ENV_PREFIX + name, default)


def _adapter(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--adapter {value!r}: expected NAME=DIR")
    return name, path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model and its adapters behind the OpenAI-compatible gateway",
        description="Serve a base model and its LoRA adapters on the CPU behind the OpenAI-compatible gateway, "
        "or run the gateway alone in front of an engine (vLLM) with --gateway-only --upstream URL.",
    )
    engine = p.add_argument_group("local engine")
    engine.add_argument("--model", help="Hugging Face model folder to serve (not with --gateway-only)")
    engine.add_argument("--served-model-name", help="name clients use for the base model (default: the folder name)")
    engine.add_argument("--adapter", action="append", type=_adapter, default=[], metavar="NAME=DIR",
                        help="a PEFT adapter folder served as NAME; repeatable")
    engine.add_argument("--engine-port", type=int, default=0,
                        help="port of the engine's own OpenAI server on 127.0.0.1 (default: any free port)")
    engine.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    engine.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    engine.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    engine.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model (off by default)")

    gw = p.add_argument_group("gateway (each flag also reads KUBETUNE_GATEWAY_<NAME>)")
    gw.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to listen on (default 127.0.0.1)")
    gw.add_argument("--port", type=int, default=_env("PORT", "8080"), help="port (default 8080; 0 picks a free one)")
    gw.add_argument("--gateway-only", action="store_true",
                    help="no local engine: proxy to --upstream (implied by --upstream without --model)")
    gw.add_argument("--workers", type=int, default=_env("WORKERS", "1"),
                    help="gateway processes sharing the port (SO_REUSEPORT) under a supervisor; one core "
                         "each (default 1; more needs --gateway-only)")
    gw.add_argument("--upstream", default=_env("UPSTREAM"), help="engine base URL, e.g. http://127.0.0.1:8000")
    gw.add_argument("--upstream-api-key-file", default=_env("UPSTREAM_API_KEY_FILE"),
                    help="file holding the key the engine expects (vLLM --api-key)")
    gw.add_argument("--upstream-timeout", type=float, default=_env("UPSTREAM_TIMEOUT", "600"),
                    help="seconds without a byte from the engine before 504 (default 600)")
    gw.add_argument("--api-keys", "--api-keys-file", dest="api_keys", default=_env("API_KEYS_FILE"),
                    help="file with accepted API keys, one per line, re-read on change (unset: no auth)")
    gw.add_argument("--log-dir", default=_env("LOG_DIR"), help="payload log folder (unset: no payload log)")
    gw.add_argument("--log-instance", default=_env("LOG_INSTANCE") or os.environ.get("POD_NAME"),
                    help="write the payload log under <log-dir>/<this>, one folder per replica sharing the "
                         "log volume (default: $POD_NAME, set in the operator's pods; unset: <log-dir> itself)")
    gw.add_argument("--sample-rate", type=float, default=_env("SAMPLE_RATE", "0.1"),
                    help="share of requests written to the payload log (default 0.1)")
    gw.add_argument("--no-redact-pii", "--no-redact", dest="redact_pii", action="store_false",
                    default=_env("REDACT_PII", "true").lower() not in ("0", "false", "no"),
                    help="write prompts without PII redaction (not recommended)")
    gw.add_argument("--log-max-bytes", type=int, default=_env("LOG_MAX_BYTES", str(50 * 1024 * 1024)),
                    help="rotate the payload log past this size (default 50 MiB)")
    gw.add_argument("--log-backups", type=int, default=_env("LOG_BACKUPS", "5"),
                    help="rotated payload logs kept (default 5)")
    gw.add_argument("--safety-scorer", "--safety", dest="safety_scorer", default=_env("SAFETY_SCORER", "offline"), choices=["offline", "llamaGuard", "none"])
    gw.add_argument("--safety-endpoint", default=_env("SAFETY_ENDPOINT"), help="Llama Guard endpoint (llamaGuard)")
    gw.add_argument("--safety-action", default=_env("SAFETY_ACTION", "flag"), choices=["log", "flag", "block"])
    gw.add_argument("--safety-process", action=argparse.BooleanOptionalAction,
                    default=_env("SAFETY_PROCESS", "true").lower() not in ("0", "false", "no"),
                    help="run the offline scorer in a child process, off the gateway's GIL (default on)")
    gw.add_argument("--max-request-bytes", type=int, default=_env("MAX_REQUEST_BYTES", str(1024 * 1024)))
    gw.add_argument("--max-tokens", type=int, default=_env("MAX_TOKENS", "4096"),
                    help="largest max_tokens a request may ask for (default 4096)")
    gw.add_argument("--rate-limit-rpm", type=float, default=_env("RATE_LIMIT_RPM"),
                    help="requests per minute of a key without its own rpm= in the keys file (default: none)")
    gw.add_argument("--rate-limit-tpm", type=float, default=_env("RATE_LIMIT_TPM"),
                    help="tokens per minute (prompt + max_tokens, corrected to the real usage) of a key "
                         "without its own tpm= (default: none)")
    gw.add_argument("--max-concurrency", type=int, default=_env("MAX_CONCURRENCY", "256"),
                    help="requests a worker sends upstream at once (default 256)")
    gw.add_argument("--max-queue", type=int, default=_env("MAX_QUEUE", "1024"),
                    help="requests a worker lets wait for a slot; more get 503 with Retry-After (default 1024)")
    gw.add_argument("--queue-timeout", type=float, default=_env("QUEUE_TIMEOUT", "30"),
                    help="seconds a request may wait for a slot before 503 (default 30)")
    gw.add_argument("--canary-config", default=_env("CANARY_CONFIG"), help="canary routes JSON file (see docs/serving.md)")
    gw.add_argument("--seed", type=int, default=_env("SEED"),
                    help="seed for sampling and canary picks (reproducible tests)")
    gw.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    p.set_defaults(func=run)


def _gateway_config(args, upstream: str):
    from .gateway import GatewayConfig
    from .payload_log import instance_log_dir

    upstream_key = None
    if args.upstream_api_key_file:
        with open(args.upstream_api_key_file) as fh:
            upstream_key = fh.read().strip()
    log_dir = instance_log_dir(args.log_dir, args.log_instance) if args.log_dir else None
    return GatewayConfig(
        upstream=upstream, upstream_api_key=upstream_key, api_keys_file=args.api_keys, log_dir=log_dir,
        sample_rate=args.sample_rate, redact_pii=args.redact_pii, log_max_bytes=args.log_max_bytes,
        log_backups=args.log_backups, safety_scorer=args.safety_scorer, safety_endpoint=args.safety_endpoint,
        safety_action=args.safety_action, max_request_bytes=args.max_request_bytes, max_tokens=args.max_tokens,
        upstream_timeout=args.upstream_timeout, canary_config=args.canary_config, seed=args.seed,
        safety_process=args.safety_process, rate_limit_rpm=args.rate_limit_rpm, rate_limit_tpm=args.rate_limit_tpm,
        max_concurrency=args.max_concurrency, max_queue=args.max_queue, queue_timeout=args.queue_timeout,
    )


def run(args) -> int:
    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.upstream and not args.model:
        args.gateway_only = True
    if args.gateway_only:
        if not args.upstream:
            print("kubetune serve: --gateway-only needs --upstream URL (or KUBETUNE_GATEWAY_UPSTREAM)", file=sys.stderr)
            return 2
        if args.model or args.adapter:
            print("kubetune serve: --model/--adapter serve a local engine; drop them with --gateway-only", file=sys.stderr)
            return 2
    elif not args.model:
        print("kubetune serve: give --model DIR (local engine) or --gateway-only --upstream URL", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"kubetune serve: --workers {args.workers}: must be 1 or more", file=sys.stderr)
        return 2
    if args.workers > 1 and not args.gateway_only:
        print("kubetune serve: --workers > 1 runs gateway processes in front of an engine: use it with "
              "--gateway-only --upstream URL", file=sys.stderr)
        return 2
    from .server import serve_forever

    try:
        if args.workers > 1:
            from .supervisor import run_supervisor

            code = run_supervisor(_gateway_config(args, args.upstream), host=args.host, port=args.port,
                                  workers=args.workers, log_level=args.log_level)
        else:
            code = serve_forever(args, _gateway_config)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"kubetune serve: {exc}", file=sys.stderr)
        return 2
    # Everything is flushed and closed by now; skip the interpreter's teardown of torch's
    # thread pools, which takes seconds and eats into the pod's termination grace period.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
