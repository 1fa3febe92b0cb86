"""Feedback across gateway workers (`kubetune serve --workers N`).

The kernel spreads connections over the workers (SO_REUSEPORT), so the feedback for a request
often reaches a worker that did not serve it. Each worker keeps its own recent records, so the
request id names its owner (`req-w<index>-...`) and a worker forwards feedback it does not own
to that worker over a Unix socket in a private folder the supervisor made (mode 0700: only the
gateway's user can reach it; nothing listens on the network for this).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from aiohttp import web

from .errors import ApiError

_OWNER = re.compile(r"^req-w(\d+)-")
FORWARD_TIMEOUT_SECONDS = 5.0


def socket_path(peer_dir: str | Path, index: int) -> Path:
    return Path(peer_dir) / f"worker-{index}.sock"


def owner_of(request_id: str) -> int | None:
    m = _OWNER.match(request_id)
    return int(m.group(1)) if m else None


def peer_app(payloads) -> web.Application:
    """What a worker answers on its Unix socket: feedback for the records it holds."""

    async def feedback(request: web.Request) -> web.Response:
        body = await request.json()
        if payloads is None:
            return web.json_response({"logged": None, "disabled": True})
        return web.json_response({"logged": payloads.feedback(body["id"], body["rating"], body.get("comment"))})

    app = web.Application()
    app.router.add_post("/feedback", feedback)
    return app


class PeerForwarder:
    def __init__(self, peer_dir: str | None, index: int):
        self.peer_dir = peer_dir
        self.index = index
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def owner(self, request_id: str, count: int) -> int | None:
        """The other worker that owns this id, or None when it is ours (or not a worker id)."""
        owner = owner_of(request_id)
        if owner is None or owner == self.index or owner >= count or self.peer_dir is None:
            return None
        return owner

    def _session(self, owner: int) -> aiohttp.ClientSession:
        session = self._sessions.get(owner)
        if session is None or session.closed:
            connector = aiohttp.UnixConnector(path=str(socket_path(self.peer_dir, owner)))
            session = self._sessions[owner] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS))
        return session

    async def forward(self, owner: int, request_id: str, rating: int, comment: str | None) -> bool | None:
        """The owner's answer: None unknown id, True written, False kept in its buffer."""
        try:
            async with self._session(owner).post("http://worker/feedback", json={
                    "id": request_id, "rating": rating, "comment": comment}) as resp:
                resp.raise_for_status()
                answer = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise ApiError(503, f"gateway worker {owner}, which served request {request_id!r}, is not reachable "
                                f"({exc.__class__.__name__}); retry shortly", code="worker_unavailable") from None
        return answer.get("logged")

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
