"""The two sides of the serving pod contract agree: the gateway argv and canary file the
operator renders are what `kubetune serve` parses and the gateway reads."""

from __future__ import annotations

import json

import pytest
import yaml

from kubetune.cli import build_parser
from kubetune.serving.canary import parse_routes

render = pytest.importorskip("kubetune.operator.render_serving", reason="the operator's serving renderer")


def _deployment(repo_root, **gateway):
    from kubetune.api import parse_modeldeployment

    doc = yaml.safe_load((repo_root / "examples" / "modeldeployments" / "adapters-canary.yaml").read_text())
    doc["metadata"]["namespace"] = "team-a"
    doc["spec"]["gateway"] = gateway
    return parse_modeldeployment(doc)


def test_operator_gateway_argv_parses_into_our_settings(repo_root):
    md = _deployment(repo_root, authSecretRef={"name": "keys", "key": "api-keys"},
                     logging={"sampleRate": 0.25, "redactPii": False},
                     safety={"scorer": "offline", "action": "block"}, maxRequestBytes=2048, maxTokens=512,
                     rateLimits={"requestsPerMinute": 600, "tokensPerMinute": 200000}, maxConcurrency=64, maxQueue=10)
    argv = render.gateway_args(md, render.ServingSettings())
    args = build_parser().parse_args(argv)
    assert args.command == "serve" and args.upstream.startswith("http://127.0.0.1:")
    assert args.model is None  # --upstream without --model: the gateway alone
    assert args.sample_rate == 0.25 and args.redact_pii is False
    assert args.safety_scorer == "offline" and args.safety_action == "block"
    assert args.max_request_bytes == 2048 and args.max_tokens == 512
    assert args.api_keys.endswith("/api-keys") and args.canary_config and args.log_dir
    assert args.host == "0.0.0.0"
    assert (args.rate_limit_rpm, args.rate_limit_tpm) == (600.0, 200000.0)
    assert (args.max_concurrency, args.max_queue) == (64, 10)
    defaults = build_parser().parse_args(render.gateway_args(_deployment(repo_root), render.ServingSettings()))
    assert defaults.rate_limit_rpm is None and defaults.rate_limit_tpm is None  # no limits unless asked


def test_operator_canary_file_is_what_the_gateway_reads():
    routes = [render.CanaryRoute(model="support", canary="support-v2", weight=10),
              render.CanaryRoute(model="legal", canary="legal-v3", weight=50)]
    text = json.dumps(render.gateway_config(routes))
    parsed = parse_routes(text, "canary.json")
    assert {name: (r.stable, r.canary, r.weight) for name, r in parsed.items()} == {
        "support": ("support", "support-v2", 10.0), "legal": ("legal", "legal-v3", 50.0)}
    assert parse_routes(json.dumps(render.gateway_config([])), "empty.json") == {}
