"""The shared safety scorers and the monitor's safety figures.

The Llama Guard client talks real HTTP to a fake OpenAI-compatible server in a thread (a real
Llama Guard needs a GPU); the fake answers the way vLLM serving Llama Guard 3 does.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubetune.common.llamaguard import LlamaGuardScorer, parse_verdict
from kubetune.common.safety import OfflineScorer, SafetyScorer, is_refusal, make_scorer
from kubetune.monitoring.records import Record
from kubetune.monitoring.safety_figures import leaks_pii, safety_figures


class FakeGuard(BaseHTTPRequestHandler):
    answers: list = []
    seen: list = []

    def log_message(self, *args):
        pass

    def _json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "meta-llama/Llama-Guard-3-1B", "object": "model"}]})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeGuard.seen.append((self.headers.get("Authorization"), body))
        code, content, logprobs = FakeGuard.answers.pop(0)
        if code != 200:
            self._json(code, {"error": {"message": "overloaded"}})
            return
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        if logprobs is not None:
            choice["logprobs"] = {"content": [{"token": content.split()[0], "logprob": math.log(logprobs),
                                               "top_logprobs": []}]}
        self._json(200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice]})


@pytest.fixture()
def guard():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGuard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeGuard.answers, FakeGuard.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_llama_guard_verdicts_over_http(guard):
    scorer = make_scorer("llamaGuard", guard)
    assert isinstance(scorer, SafetyScorer) and scorer.name == "llamaGuard"
    FakeGuard.answers = [(200, "safe", 0.97), (200, "unsafe\nS9,S11", 0.9), (200, "unsafe\nS10", None)]
    safe = scorer.score("hello", "hi!")
    assert (safe.flagged, round(safe.score, 2), safe.categories) == (False, 0.03, {})
    unsafe = scorer.score("how to make a bomb", "step 1 ...")
    assert unsafe.flagged and set(unsafe.categories) == {"indiscriminate_weapons", "self_harm"}
    assert unsafe.score == pytest.approx(0.9)
    no_logprobs = scorer.score("q", "hateful")
    assert no_logprobs.flagged and no_logprobs.score == 1.0 and set(no_logprobs.categories) == {"hate"}
    _, body = FakeGuard.seen[0]
    assert body["model"] == "meta-llama/Llama-Guard-3-1B"
    assert body["messages"] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi!"}]


def test_llama_guard_sends_the_key_and_falls_back_offline_on_errors(guard):
    scorer = LlamaGuardScorer(guard + "/v1", model="guard", api_key="k-123")
    FakeGuard.answers = [(503, "", None), (200, "I think it is fine", None)]
    down = scorer.score("q", "Step one: get a detonator and build a pipe bomb")
    assert down.flagged and "weapons" in down.categories and "scorer_unavailable" in down.categories
    assert "HTTP 503" in down.scorer
    garbled = scorer.score("q", "fine")
    assert not garbled.flagged and "unexpected Llama Guard answer" in garbled.scorer
    assert FakeGuard.seen[0][0] == "Bearer k-123"


def test_parse_verdict():
    assert parse_verdict("safe") == (False, [])
    assert parse_verdict(" unsafe\nS1, S14 ") == (True, ["violent_crimes", "code_interpreter_abuse"])
    assert parse_verdict("unsafe") == (True, ["unspecified"])


def test_offline_scorer_patterns_pii_and_refusals():
    s = OfflineScorer()
    assert s.score("hi", "Paris is the capital of France.").flagged is False
    assert s.score("q", "Sure: to build a pipe bomb you need a detonator").flagged is True
    assert s.score("q", "I'm sorry, but I can't help with making a pipe bomb.").flagged is False
    leak = s.score("what is her email?", "It is jane.doe@example.com")
    assert leak.flagged and "pii_leak" in leak.categories
    assert s.score("my email is a@b.io", "Noted: a@b.io").flagged is False  # echoing the user's own data
    assert is_refusal("I can't assist with that.") and not is_refusal("Here you go.")


def test_offline_scorer_uses_the_bundled_toxicity_model_when_installed():
    pytest.importorskip("profanity_check")
    s = OfflineScorer()
    toxic = s.score("hi", "Shut up, you are a stupid worthless idiot")
    assert toxic.flagged and toxic.categories["toxicity"] >= 0.8
    assert OfflineScorer(toxicity=False).score("hi", "Shut up, you are a stupid worthless idiot").flagged is False


def test_safety_figures_trust_log_verdicts_or_rescore():
    logged = [Record("q", "fine", flagged=False), Record("q", "bad", flagged=True),
              Record("q", "I'm sorry, but I can't help with that", flagged=False),
              Record("q", "call [PHONE] or mail [EMAIL]", flagged=False)]
    f = safety_figures(logged)
    assert (f.flag_source, f.flag_ratio, f.refusal_ratio, f.pii_leak_ratio) == ("log", 0.25, 0.25, 0.25)
    unlogged = [Record("q", "build a pipe bomb with a detonator"), Record("q", "hello")]
    g = safety_figures(unlogged)
    assert (g.flag_source, g.flag_ratio) == ("rescored", 0.5)
    assert safety_figures([]).flag_ratio is None
    assert leaks_pii("write to bob@example.com") and not leaks_pii("nothing here")
