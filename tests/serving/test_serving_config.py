"""Bad configuration is refused at start with a message naming the flag, file, line or field."""

from __future__ import annotations

import subprocess

import pytest

from kubetune.serving.auth import KeyFile, bearer_token
from kubetune.serving.canary import CanaryConfigError, CanaryRouter, parse_routes
from kubetune.serving.gateway import Gateway, GatewayConfig
from tests.serving.serving_support import KUBETUNE


def test_canary_file_errors_name_line_and_fields(tmp_path):
    with pytest.raises(CanaryConfigError, match=r"canary.json: line 3: invalid JSON"):
        parse_routes('{"routes": [\n  {"model": "a",\n  oops}]}', "canary.json")
    with pytest.raises(CanaryConfigError) as err:
        parse_routes('{"routes": [{"model": "a", "weight": 120}, {"canary": "b", "weight": 5}]}', "c.json")
    message = str(err.value)
    assert "routes[0].canary: required" in message and "routes[0].weight: a number within [0, 100], got 120" in message
    assert "routes[1].model: required" in message
    with pytest.raises(CanaryConfigError, match="appears twice"):
        parse_routes('{"routes": [{"model": "a", "canary": "b", "weight": 1}, {"model": "a", "canary": "c", "weight": 1}]}')
    with pytest.raises(CanaryConfigError, match="missing.json"):
        CanaryRouter(tmp_path / "missing.json")


def test_canary_pick_is_seeded_and_weighted():
    routes = parse_routes('{"routes": [{"model": "s", "canary": "s-v2", "weight": 25}]}')
    router = CanaryRouter(routes=routes, seed=3)
    many = [router.pick("s") for _ in range(20000)]
    again = CanaryRouter(routes=routes, seed=3)
    assert [again.pick("s") for _ in range(20000)] == many  # reproducible
    share = many.count("s-v2") / len(many)
    assert 0.23 < share < 0.27  # Binomial(20000, 0.25): sd 0.003, so > 6 sd either side
    assert router.pick("other") == "other"


def test_gateway_config_errors_name_the_flags():
    with pytest.raises(ValueError) as err:
        Gateway(GatewayConfig(upstream="localhost:8000", safety_action="shout", sample_rate=2))
    message = str(err.value)
    assert "--safety-action: 'shout'" in message and "--sample-rate: 2" in message and "--upstream" in message
    with pytest.raises(ValueError, match="--safety-endpoint: required"):
        Gateway(GatewayConfig(safety_scorer="llamaGuard"))


def test_key_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\n  alpha  \nbeta\n")
    store = KeyFile(keys)
    assert len(store) == 2 and store.check("alpha") and store.check("beta")
    assert not store.check("alph") and not store.check("") and not store.check("alpha beta")
    with pytest.raises(FileNotFoundError, match="API keys file"):
        KeyFile(tmp_path / "absent")
    assert bearer_token("Bearer  xyz ") == "xyz" and bearer_token("Basic xyz") is None and bearer_token(None) is None


@pytest.mark.parametrize("args, message", [
    (["--gateway-only"], "--gateway-only needs --upstream"),
    ([], "give --model DIR"),
    (["--model", "/nonexistent/model"], "no config.json there"),
    (["--upstream", "http://127.0.0.1:1", "--canary-config", "/nonexistent/canary.json"], "canary.json"),
    (["--model", "/some/model", "--workers", "2"], "use it with --gateway-only"),
    (["--upstream", "http://127.0.0.1:1", "--workers", "0"], "--workers 0: must be 1 or more"),
    (["--upstream", "http://127.0.0.1:1", "--workers", "2", "--canary-config", "/nonexistent/canary.json"],
     "exited with code 2 while starting"),
])
def test_cli_refuses_bad_setups(tmp_path, args, message):
    done = subprocess.run([KUBETUNE, "serve", *args, "--port", "0"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
