"""Pure helpers for API-convention conditions and status patches (shared by all handlers)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any


def now_rfc3339(clock: dt.datetime | None = None) -> str:
    moment = clock or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(type_: str, status: bool | str, reason: str, message: str = "") -> dict[str, Any]:
    """A condition without the bookkeeping fields (set_conditions adds them)."""
    if isinstance(status, bool):
        status = "True" if status else "False"
    return {"type": type_, "status": status, "reason": reason, "message": message}


def find_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def set_conditions(
    current: Iterable[Mapping[str, Any]] | None,
    desired: Iterable[Mapping[str, Any]],
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Merge desired conditions into current ones.

    lastTransitionTime changes only when a condition's status changes; reason, message and
    observedGeneration follow the desired value. Conditions not mentioned are kept.
    """
    result = [copy.deepcopy(dict(c)) for c in current or ()]
    for want in desired:
        new = dict(want)
        if generation is not None:
            new["observedGeneration"] = generation
        old = find_condition(result, new["type"])
        if old is not None and old.get("status") == new["status"] and old.get("lastTransitionTime"):
            new["lastTransitionTime"] = old["lastTransitionTime"]
        else:
            new["lastTransitionTime"] = now
        result = [c for c in result if c.get("type") != new["type"]] + [new]
    order = {c["type"]: i for i, c in enumerate(current or ())}
    result.sort(key=lambda c: order.get(c["type"], len(order)))
    return result


def remove_conditions(current: Iterable[Mapping[str, Any]] | None, types: Iterable[str]) -> list[dict[str, Any]]:
    drop = set(types)
    return [copy.deepcopy(dict(c)) for c in current or () if c.get("type") not in drop]


def status_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch turning `current` status into `desired` for the keys of `desired`.

    None when nothing changes, so callers write status only on change. A key set to None
    in `desired` removes it.
    """
    current = current or {}
    patch = {}
    for key, value in desired.items():
        if value is None:
            if key in current:
                patch[key] = None
        elif current.get(key) != value:
            patch[key] = value
    return patch or None
