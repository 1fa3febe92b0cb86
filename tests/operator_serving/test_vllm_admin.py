"""The runtime LoRA client against the fake vLLM over real HTTP: sync, versions, typed errors."""

from __future__ import annotations

import socket

import pytest

from kubetune.operator.vllm_admin import (
    EngineRequestError,
    EngineUnreachable,
    VllmAdmin,
    VllmAdminError,
    sync_adapters,
)


@pytest.fixture
def engine(fake_vllm):
    fake_vllm.restart()
    fake_vllm.fail_paths.clear()
    yield fake_vllm
    fake_vllm.fail_paths.clear()


def url(engine) -> str:
    return f"http://127.0.0.1:{engine.port}"


async def test_sync_loads_missing_reloads_new_versions_and_unloads_strays(engine):
    async with VllmAdmin(url(engine)) as admin:
        states = await sync_adapters(admin, {"a": "/p/a1", "b": "/p/b1"})
        assert states == {"a": ("Loaded", ""), "b": ("Loaded", "")}
        assert engine.loaded() == {"a": "/p/a1", "b": "/p/b1"}

        calls = len(engine.calls)
        assert await sync_adapters(admin, {"a": "/p/a1", "b": "/p/b1"}) == states
        assert len(engine.calls) == calls  # already right: no load or unload issued

        states = await sync_adapters(admin, {"a": "/p/a2", "startup": "/p/s"}, keep=frozenset({"kept"}))
        assert engine.loaded() == {"a": "/p/a2", "startup": "/p/s"}
        assert {"lora_name": "b"} in engine.calls_to("/v1/unload_lora_adapter")
        assert states == {"a": ("Loaded", ""), "startup": ("Loaded", "")}


async def test_models_lists_adapters_with_their_parent(engine):
    async with VllmAdmin(url(engine)) as admin:
        await admin.load_adapter("x", "/p/x")
        cards = {c.id: c for c in await admin.models()}
    assert not cards["base"].is_adapter
    assert cards["x"].is_adapter and cards["x"].root == "/p/x" and cards["x"].parent == "base"


async def test_engine_errors_are_typed_with_status_and_message(engine):
    engine.fail_paths.add("/v1/load_lora_adapter")
    async with VllmAdmin(url(engine)) as admin:
        with pytest.raises(EngineRequestError) as err:
            await admin.load_adapter("x", "/nope")
        assert err.value.status == 404 and err.value.message == "No adapter found"
        assert isinstance(err.value, VllmAdminError)
        states = await sync_adapters(admin, {"x": "/nope"})
    assert states["x"][0] == "Failed" and "No adapter found" in states["x"][1]


async def test_unreachable_engine():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    async with VllmAdmin(f"http://127.0.0.1:{port}", timeout=2) as admin:
        with pytest.raises(EngineUnreachable):
            await admin.models()
