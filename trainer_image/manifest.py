"""manifest.json: what an artifact is, where it came from and how good it is (docs/contracts.md).

Digests are streamed (a 14 GB base model never sits in memory) and defined over sorted
relative paths, so they do not depend on the filesystem's listing order or on where the
folder lives: the same files give the same digest on any machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TRACKED_LIBRARIES = ("torch", "transformers", "peft", "ray", "tokenizers", "safetensors", "trl")
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """`sha256:` over `relative/path NUL sha256(file) LF` for each file in sorted path order."""
    h = hashlib.sha256()
    for rel in sorted(Path(f).relative_to(root).as_posix() for f in files):
        h.update(rel.encode() + b"\0" + file_sha256(root / rel).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def dir_digest(root: Path) -> str:
    """Digest of every file under a folder (the artifact digest of adapter/ or merged/)."""
    root = Path(root)
    return files_digest(root, [p for p in root.rglob("*") if p.is_file()])


def weights_digest(model_dir: Path) -> str:
    """Digest of a model folder's weight files only (configs and tokenizers may be re-saved)."""
    model_dir = Path(model_dir)
    files = [p for p in model_dir.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise FileNotFoundError(f"{model_dir}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to take a digest of")
    return files_digest(model_dir, files)


def library_versions(names: Iterable[str] = TRACKED_LIBRARIES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def kubetune_version() -> str:
    try:
        return metadata.version("kubetune")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def build_manifest(
    *,
    job_name: str | None,
    job_namespace: str | None,
    base_uri: str,
    base_revision: str | None,
    base_digest: str,
    artifact: dict[str, Any],
    dataset_digest: str | None,
    config: dict[str, Any],
    metrics: dict[str, Any],
    gates: list[dict[str, Any]],
    gates_passed: bool,
    chat_template: str | None,
    reference_rows: int,
    created_time: str | None = None,
    versions: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """The manifest as a plain dict, keys in the order docs/contracts.md lists them."""
    return {
        "kubetune": kubetune_version(),
        "job": {"name": job_name, "namespace": job_namespace},
        "baseModel": {"uri": base_uri, "revision": base_revision, "digest": base_digest},
        "artifact": artifact,
        "datasetDigest": dataset_digest,
        "config": config,
        "metrics": metrics,
        "gates": gates,
        "gatesPassed": gates_passed,
        "chatTemplate": chat_template,
        "versions": versions if versions is not None else library_versions(),
        "reference": {"file": "reference.jsonl", "rows": reference_rows},
        "createdTime": created_time or rfc3339_now(),
    }
