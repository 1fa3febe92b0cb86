"""Atomic training checkpoints: write a temp sibling, then rename; resume from the newest complete one.

Layout under the checkpoint storage:

    step-00000010/
      trainable.pt     tensors of the parameters the method trains (adapter, unfrozen blocks)
      optimizer.pt     AdamW state keyed by parameter *name* (survives HFT's optimizer rebuilds)
      meta.json        step, data position, seed, method, losses so far; written last

A directory only counts when its name is final (the rename is atomic on one filesystem) and it
holds meta.json, so a run killed mid-save leaves a `.tmp-*` dir that resume ignores and the
next save cleans up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d{8})$")
META = "meta.json"
TRAINABLE = "trainable.pt"
OPTIMIZER = "optimizer.pt"


@dataclass(frozen=True)
class CheckpointRef:
    path: Path
    step: int

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META).read_text())


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(dir_name: str) -> int | None:
    """The step a checkpoint folder's name stands for (`step-00000010` -> 10), else None."""
    match = _STEP_DIR.match(dir_name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: str | Path) -> list[CheckpointRef]:
    """Complete checkpoints, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        step = step_of(child.name)
        if step is not None and (child / META).is_file():
            found.append(CheckpointRef(child, step))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: str | Path) -> CheckpointRef | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> CheckpointRef:
    """Write one checkpoint atomically and prune older ones down to `keep_last`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        torch.save({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / TRAINABLE)
        torch.save(optimizer, tmp / OPTIMIZER)
        (tmp / META).write_text(json.dumps({**meta, "step": step}, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # same step saved again (e.g. the end of a resumed run)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)
    log.info("checkpoint saved: %s", final)
    return CheckpointRef(final, step)


def load_trainable(ref: CheckpointRef) -> dict[str, torch.Tensor]:
    return torch.load(ref.path / TRAINABLE, map_location="cpu", weights_only=True)


def load_optimizer(ref: CheckpointRef) -> dict[str, Any]:
    return torch.load(ref.path / OPTIMIZER, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- optimizer state by name


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Any]:
    """AdamW state keyed by parameter name (`names` maps id(param) -> name)."""
    state = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in optimizer.state and id(p) in names:
                state[names[id(p)]] = {
                    k: (v.detach().cpu().clone() if torch.is_tensor(v) else v)
                    for k, v in optimizer.state[p].items()
                }
    return {"state": state}


def restore_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], params_by_name: dict[str, torch.nn.Parameter]
) -> int:
    """Put saved per-name state back for parameters the optimizer holds; returns how many."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    restored = 0
    for name, entry in saved.get("state", {}).items():
        p = params_by_name.get(name)
        if p is None or id(p) not in held:
            continue
        optimizer.state[p] = {
            k: (v.to(p.device) if torch.is_tensor(v) and k != "step" else v) for k, v in entry.items()
        }
        restored += 1
    return restored
