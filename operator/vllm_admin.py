"""vLLM's runtime LoRA API, as the operator uses it: one small async client and a sync step.

vLLM (with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and `--enable-lora`) loads and unloads
adapters without a restart through `POST /v1/load_lora_adapter` and
`POST /v1/unload_lora_adapter`; `/v1/models` lists what is loaded, LoRA entries with a
`parent` (the base) and a `root` (the path they were loaded from). That API is young and its
error bodies changed between releases, so it lives behind this one module. Errors are typed:

    VllmAdminError
    ├── EngineUnreachable   connection refused, DNS, timeout: the pod is not serving (yet)
    └── EngineRequestError  the engine answered with an error status (carries status, message)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

LOADED, LOADING, FAILED = "Loaded", "Loading", "Failed"


class VllmAdminError(Exception):
    """Any failure talking to a vLLM engine."""


class EngineUnreachable(VllmAdminError):
    """The engine did not answer (not started, restarting, network)."""


class EngineRequestError(VllmAdminError):
    """The engine answered an error status."""

    def __init__(self, method: str, path: str, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


@dataclass(frozen=True)
class ModelCard:
    id: str
    root: str | None = None
    parent: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


def _error_message(body: str) -> str:
    """vLLM answers `{"message": ...}`, `{"error": {"message": ...}}` or plain text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:2000]
    if isinstance(data, dict):
        if isinstance(data.get("error"), dict) and data["error"].get("message"):
            return str(data["error"]["message"])
        if data.get("message"):
            return str(data["message"])
        if data.get("detail"):
            return str(data["detail"])
    return body.strip()[:2000]


class VllmAdmin:
    """Client for one engine (one pod): `VllmAdmin("http://10.0.0.7:8000")`."""

    def __init__(self, base_url: str, *, timeout: float = 60.0, api_key: str | None = None,
                 session: aiohttp.ClientSession | None = None):
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout))
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> VllmAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> str:
        url = self.base_url + path
        try:
            async with self._client().request(method, url, json=payload, timeout=self._timeout) as resp:
                body = await resp.text()
                if resp.status >= 400:
                    raise EngineRequestError(method, path, resp.status, _error_message(body))
                return body
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
            raise EngineUnreachable(f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc

    async def models(self) -> list[ModelCard]:
        body = await self._request("GET", "/v1/models")
        try:
            data = json.loads(body).get("data") or []
        except (ValueError, AttributeError) as exc:
            raise EngineRequestError("GET", "/v1/models", 200, f"not an OpenAI model list: {body[:200]!r}") from exc
        return [ModelCard(str(m.get("id")), m.get("root"), m.get("parent")) for m in data if isinstance(m, dict)]

    async def load_adapter(self, name: str, path: str) -> None:
        await self._request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload_adapter(self, name: str) -> None:
        await self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})


async def sync_adapters(
    admin: VllmAdmin, desired: Mapping[str, str], *, keep: frozenset[str] = frozenset()
) -> dict[str, tuple[str, str]]:
    """Make one engine serve exactly `desired` (name -> path) plus `keep`; verify in /v1/models.

    Returns name -> (Loaded|Failed, message). An adapter loaded from another path is unloaded
    and loaded again (a new version under the same name). Raises EngineUnreachable when the
    engine does not answer at all, so the caller can mark the pod Loading and retry later.
    """
    loaded = {card.id: card.root for card in await admin.models() if card.is_adapter}
    states: dict[str, tuple[str, str]] = {}
    for name in sorted(set(loaded) - set(desired) - set(keep)):
        try:
            await admin.unload_adapter(name)
        except EngineRequestError:
            pass  # verified below: a still-listed stray adapter is harmless to the desired ones
    for name, path in sorted(desired.items()):
        if name in loaded and loaded[name] == path:
            continue
        try:
            if name in loaded:
                await admin.unload_adapter(name)
            await admin.load_adapter(name, path)
        except EngineRequestError as exc:
            states[name] = (FAILED, str(exc))
    listed = {card.id: card.root for card in await admin.models()}
    for name, path in desired.items():
        if name in states:
            continue
        if name not in listed:
            states[name] = (FAILED, f"{name!r} is not listed in /v1/models after loading {path}")
        elif listed[name] not in (None, path):
            states[name] = (FAILED, f"{name!r} is served from {listed[name]}, not {path}")
        else:
            states[name] = (LOADED, "")
    return states
