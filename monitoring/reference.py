"""Finding the drift reference of an artifact (`manifest.json` -> `reference.file`)."""

from __future__ import annotations

import json
from pathlib import Path


class ReferenceMissing(FileNotFoundError):
    """The artifact has no usable reference profile; the message names the artifact."""


def find_manifest(artifact: Path) -> Path | None:
    """manifest.json of an artifact folder, or of the folder above (a URI may name `adapter/`)."""
    for folder in (artifact, artifact.parent):
        candidate = folder / "manifest.json"
        if candidate.is_file():
            return candidate
    return None


def reference_file(artifact: str | Path) -> Path:
    """The reference JSON lines of an artifact; raises ReferenceMissing saying what is wrong."""
    artifact = Path(artifact)
    if artifact.is_file():
        if artifact.name == "manifest.json":
            artifact = artifact.parent
        else:
            return artifact
    if not artifact.exists():
        raise ReferenceMissing(f"artifact {artifact}: no such file or folder")
    manifest_path = find_manifest(artifact)
    if manifest_path is None:
        raise ReferenceMissing(f"artifact {artifact}: no manifest.json, so no drift reference profile")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReferenceMissing(f"artifact {manifest_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    ref = manifest.get("reference") if isinstance(manifest, dict) else None
    name = ref.get("file") if isinstance(ref, dict) else None
    if not isinstance(name, str) or not name:
        raise ReferenceMissing(
            f"artifact {manifest_path.parent}: manifest.json has no reference.file (the drift reference profile); "
            "re-export the model with a kubetune version that writes reference.jsonl"
        )
    path = (manifest_path.parent / name).resolve()
    if manifest_path.parent.resolve() not in path.parents:
        raise ReferenceMissing(f"artifact {manifest_path.parent}: reference.file {name!r} points outside the artifact")
    if not path.is_file():
        raise ReferenceMissing(f"artifact {manifest_path.parent}: reference profile {name} is missing")
    return path
