"""Which malloc the local Ray training workers run on.

PyTorch on CPU allocates and frees activation-sized buffers every step. glibc's malloc hands
the larger ones back to the kernel and fragments its heap, so a worker's peak RSS grows well
past what it holds: on SmolLM2-135M LoRA (4 packed rows of 256 tokens) 3856 MiB with glibc
against 2906 MiB with tcmalloc at the same speed and the same losses (docs/benchmarks.md).
A different allocator only takes effect through LD_PRELOAD when a process starts, so it is
handed to the Ray workers `kubetune train --local` starts, through their runtime_env.

KUBETUNE_ALLOCATOR: `auto` (default: tcmalloc when its library is installed, else glibc),
`tcmalloc` (fail before training if it is missing), `system` (glibc, no preload).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from .errors import TrainerConfigError

TCMALLOC_LIBRARY = "libtcmalloc_minimal.so.4"
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
CHOICES = ("auto", "tcmalloc", "system")
# tcmalloc reports every allocation above 1 GiB on stderr; the vocabulary-sized logits of a large
# batch are one, every step
QUIET_LARGE_ALLOCATIONS = str(1 << 40)


def find_tcmalloc(exists: Callable[[str], bool] = os.path.exists) -> str | None:
    return next((path for d in LIBRARY_DIRS if exists(path := f"{d}/{TCMALLOC_LIBRARY}")), None)


def worker_allocator_env(environ: Mapping[str, str], *,
                         exists: Callable[[str], bool] = os.path.exists) -> dict[str, str]:
    """Environment variables for training workers (empty: keep the system allocator)."""
    choice = environ.get("KUBETUNE_ALLOCATOR", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise TrainerConfigError(
            f"KUBETUNE_ALLOCATOR={environ['KUBETUNE_ALLOCATOR']!r}: use one of {', '.join(CHOICES)}")
    preload = environ.get("LD_PRELOAD", "")
    if choice == "system" or "tcmalloc" in preload or "jemalloc" in preload:
        return {}  # asked for glibc, or the caller already chose an allocator
    library = find_tcmalloc(exists)
    if library is None:
        if choice == "tcmalloc":
            raise TrainerConfigError(
                f"KUBETUNE_ALLOCATOR=tcmalloc but {TCMALLOC_LIBRARY} is not in {', '.join(LIBRARY_DIRS)}: "
                "install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4) or unset KUBETUNE_ALLOCATOR")
        return {}
    return {"LD_PRELOAD": f"{preload} {library}".strip(),
            "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": QUIET_LARGE_ALLOCATIONS}
