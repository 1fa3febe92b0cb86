"""Shared test setup: offline hub, a tiny model, one Ray session per test run.

Component tests live in their own folders (tests/api, tests/trainer, tests/operator, ...).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

for var, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(var, value)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))  # so `tests.fixtures` imports

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    from tests.harness.skip_guard import register

    register(config)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared: data files and third-party schemas (read from there, never copied)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it sits beside the checkout)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama model + ChatML tokenizer saved as a normal Hugging Face folder."""
    from tests.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole run: starting Ray costs seconds, a fit's workers more."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
