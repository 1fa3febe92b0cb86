"""URIs in specs, and where they live inside a pod or on this machine.

Pure: the operator uses it to decide which volumes to mount, the trainer and the local
engine to find files. `pvc://claim/sub/path` is mounted at `<pvc_root>/claim` (default
`/mnt/pvc`); a hub-style `org/name` is looked up under the model cache (default `/models`),
never downloaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

PVC_ROOT = "/mnt/pvc"
MODEL_CACHE = "/models"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    """One of: file, pvc, s3, hub."""
    location: str
    """Path for file; key for s3 (`bucket/prefix`); `org/name` for hub; sub-path for pvc."""
    claim: str | None = None
    """PVC name for pvc URIs."""


def parse_uri(uri: str) -> ParsedUri:
    """Classify a URI from a spec; raises ValueError with the accepted forms on anything else."""
    if uri.startswith("pvc://"):
        rest = uri[len("pvc://") :]
        claim, _, sub = rest.partition("/")
        if not claim:
            raise ValueError(f"{uri!r}: pvc URIs look like pvc://CLAIM/path")
        return ParsedUri("pvc", sub.strip("/"), claim)
    if uri.startswith("s3://"):
        if not uri[len("s3://") :]:
            raise ValueError(f"{uri!r}: s3 URIs look like s3://bucket/prefix")
        return ParsedUri("s3", uri[len("s3://") :])
    if uri.startswith("file://"):
        return ParsedUri("file", uri[len("file://") :])
    if "://" in uri:
        raise ValueError(
            f"{uri!r}: unsupported scheme; use a path, file://, pvc://CLAIM/path, s3://bucket/key or org/name"
        )
    if _HUB_NAME.match(uri) and not uri.startswith((".", "/")):
        return ParsedUri("hub", uri)
    return ParsedUri("file", uri)


def local_path(uri: str, *, pvc_root: str | None = None, model_cache: str | None = None) -> str:
    """Where a URI's content is on the local filesystem (s3 has none: raises ValueError).

    A hub-style name that exists as a relative path is taken as that path, so
    `examples/data/train.jsonl`-like names work from a checkout.
    """
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return parsed.location
    if parsed.scheme == "pvc":
        root = pvc_root or os.environ.get("KUBETUNE_PVC_ROOT", PVC_ROOT)
        return str(PurePosixPath(root) / parsed.claim / parsed.location) if parsed.location else str(
            PurePosixPath(root) / parsed.claim
        )
    if parsed.scheme == "hub":
        if os.path.exists(parsed.location):
            return parsed.location
        cache = model_cache or os.environ.get("KUBETUNE_MODEL_CACHE", MODEL_CACHE)
        return str(PurePosixPath(cache) / parsed.location)
    raise ValueError(f"{uri!r} is remote ({parsed.scheme}); read it through fsspec")
