"""Seeded synthetic traffic: everyday assistant prompts, optionally with a new topic mixed in."""

from __future__ import annotations

import json
import random
from pathlib import Path

_TOPICS = {
    "cooking": "pasta sauce garlic onion oven recipe bake flour butter salt pepper soup salad rice chicken".split(),
    "travel": "flight hotel passport luggage train ticket museum beach visa itinerary airport map city".split(),
    "garden": "tomato soil compost seeds water shade roses lawn mulch pruning weeds harvest fertilizer".split(),
    "money": "budget savings account interest loan mortgage taxes invoice pension credit rent salary".split(),
    "fitness": "running stretching squats protein muscles cardio yoga marathon sleep posture weights".split(),
}
_NEW_TOPIC = (
    "kubernetes pod helm chart operator ingress namespace daemonset statefulset etcd kubelet "
    "scheduler taint toleration configmap secret rbac crd reconcile controller webhook"
).split()
_OPENERS = ["How do I", "What is the best way to", "Can you explain how to", "Give me tips to", "Why does my"]
_VERBS = ["choose", "fix", "plan", "improve", "start with", "compare", "keep track of", "prepare"]
_ANSWER = ["Start by", "A good approach is to", "Most people", "You can", "Try to"]
_FILLER = "usually often carefully first then also simply really quickly slowly every week".split()


def _sentence(rng: random.Random, vocab: list[str]) -> str:
    words = [rng.choice(vocab) for _ in range(rng.randint(2, 5))]
    return f"{rng.choice(_OPENERS)} {rng.choice(_VERBS)} {' '.join(words)} {rng.choice(_FILLER)}?"


def _answer(rng: random.Random, vocab: list[str]) -> str:
    parts = [
        f"{rng.choice(_ANSWER)} {rng.choice(_VERBS)} the {rng.choice(vocab)} {rng.choice(_FILLER)}."
        for _ in range(rng.randint(1, 3))
    ]
    return " ".join(parts)


def pairs(n: int, seed: int, *, shifted_share: float = 0.0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < shifted_share:
            vocab = _NEW_TOPIC
        else:
            vocab = _TOPICS[rng.choice(list(_TOPICS))]
        rows.append({"prompt": _sentence(rng, vocab), "response": _answer(rng, vocab)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
