"""Helpers shared by the data preparation tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One JSON document per line; str items are written verbatim (for malformed lines)."""
    with open(path, "w") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def make_spec(datasets: list[dict], *, objective: str = "sft", seed: int = 42, rules: bool = True, **preprocessing):
    """A validated FineTuneJobSpec around the given datasets and preprocessing settings."""
    from kubetune.api import FineTuneJobSpec, parse_finetunejob

    body = {
        "baseModel": {"uri": "/nonexistent/model"},
        "datasets": datasets,
        "objective": {"type": objective},
        "hyperparameters": {"seed": seed},
        "preprocessing": {"validationSplit": 0.0, **preprocessing},
        "output": {"uri": "/tmp/unused"},
    }
    if not rules:  # only the schema: lets a test reach the trainer's own checks
        return FineTuneJobSpec.model_validate(body)
    return parse_finetunejob({"metadata": {"name": "t"}, "spec": body}).spec
