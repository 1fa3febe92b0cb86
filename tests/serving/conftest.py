"""Fixtures shared by the gateway tests: one event-loop thread and a scripted upstream per module."""

from __future__ import annotations

import pytest

from tests.serving.serving_support import AppThread, ScriptedUpstream


@pytest.fixture(scope="module")
def loop_thread():
    thread = AppThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def upstream(loop_thread):
    engine = ScriptedUpstream()
    engine.url = loop_thread.serve(engine.app())
    return engine
