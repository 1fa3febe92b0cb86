"""Weighted canary routing of an adapter name between its stable and canary versions.

The operator renders the routes into a JSON file (a ConfigMap key) that the gateway re-reads
when it changes:

    {"version": 1, "routes": [{"model": "support", "canary": "support-v2", "weight": 10}]}

Clients keep asking for `support`; `weight` percent of those requests go to `support-v2`, the
rest to `support` itself (the stable version, still served under its own name). Both versions
are loaded in the engine under their own names. A route may name its stable version apart with
`"stable": "support-v1"`; `"adapter"` is accepted for `"model"`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kubetune.serving.canary")


class CanaryConfigError(ValueError):
    pass


@dataclass(frozen=True)
class CanaryRoute:
    adapter: str
    stable: str
    canary: str
    weight: float  # percent, 0..100


def parse_routes(text: str, source: str = "canary config") -> dict[str, CanaryRoute]:
    """Routes by adapter name; every problem in the file is reported at once."""
    try:
        data = json.loads(text) if text.strip() else {"routes": []}
    except json.JSONDecodeError as exc:
        raise CanaryConfigError(f"{source}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("routes", []), list):
        raise CanaryConfigError(f'{source}: expected {{"routes": [...]}}')
    routes, errors = {}, []
    for i, item in enumerate(data.get("routes", [])):
        where = f"{source}: routes[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where}: expected an object")
            continue
        item = dict(item)
        item.setdefault("model", item.get("adapter"))
        item.setdefault("stable", item.get("model"))
        for field in ("model", "stable", "canary"):
            if not isinstance(item.get(field), str) or not item.get(field):
                errors.append(f"{where}.{field}: required, a non-empty string")
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 100:
            errors.append(f"{where}.weight: a number within [0, 100], got {weight!r}")
        if not errors and item["model"] in routes:
            errors.append(f"{where}.model: {item['model']!r} appears twice")
        if not errors:
            routes[item["model"]] = CanaryRoute(item["model"], item["stable"], item["canary"], float(weight))
    if errors:
        raise CanaryConfigError("; ".join(errors))
    return routes


class CanaryRouter:
    """Picks a version per request; seeded for reproducible tests."""

    def __init__(self, path: str | os.PathLike | None = None, *, seed: int | None = None,
                 routes: dict[str, CanaryRoute] | None = None, check_interval: float = 1.0,
                 on_change=None):
        self.path = Path(path) if path else None
        self.routes: dict[str, CanaryRoute] = routes or {}
        self._random = random.Random(seed)
        self._signature = None
        self._checked = 0.0
        self.check_interval = check_interval
        self.on_change = on_change
        if self.path is not None:
            self._reload(initial=True)
        elif on_change:
            on_change(self.routes)

    def _reload(self, initial: bool = False) -> None:
        try:
            st = self.path.stat()
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if signature == self._signature:
                return
            routes = parse_routes(self.path.read_text(), str(self.path))
        except (OSError, CanaryConfigError) as exc:
            if initial:
                raise CanaryConfigError(str(exc)) from exc
            log.error("canary config %s: %s; keeping the previous routes", self.path, exc)
            return
        self.routes, self._signature = routes, signature
        log.info("canary routes: %s", {a: (r.stable, r.canary, r.weight) for a, r in routes.items()})
        if self.on_change:
            self.on_change(routes)

    def refresh(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self._reload()

    def pick(self, name: str) -> str:
        """The served name to send a request for `name` to (itself when it has no route)."""
        route = self.routes.get(name)
        if route is None:
            return name
        return route.canary if self._random.random() * 100 < route.weight else route.stable
