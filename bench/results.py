"""What every bench writes beside its figures: the machine it ran on, and the JSON file itself.

`bench/report.py` reads these files into out/bench/report.md; each carries `bench` (its name)
and `machine` (cores, CPU model, load average before and after, library versions, commit).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "transformers", "peft", "trl", "kopf", "aiohttp", "evidently", "scipy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""
    return out.stdout.strip() + ("+changes" if dirty else "")


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    """Call at the start of a bench; `finish` adds the load average after."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "loadAverageBefore": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "commit": _commit(), "versions": _versions()}


def write(path: str | Path, bench: str, about: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Write {bench, machine, ...figures} atomically (temporary sibling, then rename)."""
    about = {**about, "loadAverageAfter": round(os.getloadavg()[0], 2)}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".tmp")
    staged.write_text(json.dumps({"bench": bench, "machine": about, **figures}, indent=2))
    os.replace(staged, target)
    print(f"wrote {target}", flush=True)
    return target


def wilson(hits: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a rate measured as hits out of n trials."""
    if n == 0:
        return (0.0, 1.0)
    z = 1.96
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
