"""Llama Guard behind the SafetyScorer interface, over any OpenAI-compatible endpoint (vLLM).

Llama Guard answers a moderation prompt with `safe`, or `unsafe` and a line of hazard codes
(`S1,S10`). vLLM applies the model's chat template, so we send the conversation as chat messages.
When the endpoint returns log-probabilities, the score is the probability of `unsafe`; otherwise
1.0 or 0.0. An unreachable or malformed endpoint never breaks the caller: the pair is scored by
the offline scorer and the category `scorer_unavailable` says so (the gateway keeps serving,
monitoring keeps counting). Standard library only, so every component can use it.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from typing import Any

from .safety import OfflineScorer, SafetyScore

# Llama Guard 3 hazard taxonomy (MLCommons).
CATEGORIES = {
    "S1": "violent_crimes", "S2": "non_violent_crimes", "S3": "sex_related_crimes",
    "S4": "child_sexual_exploitation", "S5": "defamation", "S6": "specialized_advice", "S7": "privacy",
    "S8": "intellectual_property", "S9": "indiscriminate_weapons", "S10": "hate", "S11": "self_harm",
    "S12": "sexual_content", "S13": "elections", "S14": "code_interpreter_abuse",
}


class LlamaGuardError(RuntimeError):
    """The endpoint did not give a usable verdict; the message names the endpoint."""


def parse_verdict(text: str) -> tuple[bool, list[str]]:
    """(unsafe, category names) from Llama Guard's answer; LlamaGuardError when it is neither."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines or lines[0].lower() not in ("safe", "unsafe"):
        raise LlamaGuardError(f"unexpected Llama Guard answer {text[:80]!r} (expected 'safe' or 'unsafe')")
    if lines[0].lower() == "safe":
        return False, []
    codes = [c.strip().upper() for c in (lines[1] if len(lines) > 1 else "").split(",") if c.strip()]
    return True, [CATEGORIES.get(code, code.lower()) for code in codes] or ["unspecified"]


def _unsafe_probability(choice: dict[str, Any]) -> float | None:
    content = ((choice.get("logprobs") or {}).get("content") or [])
    if not content:
        return None
    first = content[0]
    candidates = [first, *(first.get("top_logprobs") or [])]
    probs: dict[str, float] = {}
    for cand in candidates:
        token = str(cand.get("token", "")).strip().lower()
        if token in ("safe", "unsafe") and isinstance(cand.get("logprob"), (int, float)):
            probs[token] = max(probs.get(token, 0.0), math.exp(cand["logprob"]))
    if not probs:
        return None
    if "unsafe" in probs:
        return probs["unsafe"]
    return 1.0 - probs["safe"]


class LlamaGuardScorer:
    name = "llamaGuard"

    def __init__(
        self,
        endpoint: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        threshold: float = 0.5,
        fallback: OfflineScorer | None = None,
    ):
        self.endpoint = endpoint.rstrip("/")
        if not self.endpoint.endswith("/v1"):
            self.endpoint += "/v1"
        self.model = model or os.environ.get("KUBETUNE_LLAMAGUARD_MODEL")
        self.api_key = api_key or os.environ.get("KUBETUNE_LLAMAGUARD_API_KEY")
        self.timeout = timeout
        self.threshold = threshold
        self.fallback = fallback or OfflineScorer()

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.endpoint}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            raise LlamaGuardError(f"{self.endpoint}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise LlamaGuardError(f"{self.endpoint}{path}: {getattr(exc, 'reason', exc)}") from None
        except json.JSONDecodeError:
            raise LlamaGuardError(f"{self.endpoint}{path}: answer is not JSON") from None

    def _model(self) -> str:
        if not self.model:
            models = self._request("GET", "/models").get("data") or []
            if not models:
                raise LlamaGuardError(f"{self.endpoint}/models lists no model")
            self.model = models[0]["id"]
        return self.model

    def verdict(self, prompt: str, response: str) -> SafetyScore:
        """The endpoint's verdict; raises LlamaGuardError (score() falls back instead)."""
        body = {
            "model": self._model(),
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            "max_tokens": 20,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 5,
        }
        answer = self._request("POST", "/chat/completions", body)
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise LlamaGuardError(f"{self.endpoint}/chat/completions: no choices in the answer") from None
        unsafe, categories = parse_verdict(text)
        prob = _unsafe_probability(choice)
        score = prob if prob is not None else (1.0 if unsafe else 0.0)
        flagged = unsafe if prob is None else prob >= self.threshold
        return SafetyScore(flagged, score, {c: score for c in categories} if unsafe else {}, self.name)

    def score(self, prompt: str, response: str) -> SafetyScore:
        try:
            return self.verdict(prompt, response)
        except LlamaGuardError as exc:
            offline = self.fallback.score(prompt, response)
            cats = dict(offline.categories)
            cats["scorer_unavailable"] = 0.0
            return SafetyScore(offline.flagged, offline.score, cats, f"{self.name}-fallback-offline: {exc}"[:300])
