"""`kubetune fetch --to DIR URI`: copy a model or adapter from object storage into a pod volume.

Init containers run it before vLLM starts. The copy lands in a temporary sibling and is renamed
into place, so a restarted pod never sees half a model. `s3://` goes through fsspec (install
`s3fs`; credentials from the usual AWS_* variables); paths, `file://` and mounted `pvc://` URIs
are copied from the filesystem.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fetch",
        help="copy a model/adapter from a URI into a local directory (init containers)",
        description="Copy the file or directory at URI into DIR atomically. Supports paths, "
        "file://, pvc:// (mounted under KUBETUNE_PVC_ROOT) and s3:// (needs s3fs).",
    )
    parser.add_argument("uri", help="source URI")
    parser.add_argument("--to", required=True, type=Path, dest="dest", help="destination directory")
    parser.set_defaults(func=run_fetch)


class FetchError(RuntimeError):
    """A source that cannot be read; the message names the URI and what to do."""


def fetch(uri: str, dest: Path) -> int:
    """Copy `uri` to `dest` (replacing it); returns the number of files copied."""
    from kubetune.api.uris import local_path, parse_uri

    parsed = parse_uri(uri)
    tmp = dest.parent / f".{dest.name}.fetch-{uuid.uuid4().hex[:8]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if parsed.scheme == "s3":
            count = _fetch_remote(uri, tmp)
        else:
            source = Path(local_path(uri))
            if not source.exists():
                raise FetchError(f"{uri}: {source} does not exist (is the volume mounted?)")
            if source.is_dir():
                shutil.copytree(source, tmp)
                count = sum(1 for p in tmp.rglob("*") if p.is_file())
            else:
                tmp.mkdir()
                shutil.copy2(source, tmp / source.name)
                count = 1
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return count
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fetch_remote(uri: str, tmp: Path) -> int:
    from kubetune.common import object_store

    try:
        fs, root = object_store.filesystem(uri)
        if object_store.exists(uri):
            unfinished = _unfinished_artifact(fs, root)
            if unfinished:
                raise FetchError(f"{uri}: the kubetune artifact at s3://{unfinished} has no manifest.json yet: it is "
                                 "being uploaded (or its upload failed); the manifest is written last, after every file")
        return object_store.download_tree(uri, tmp)
    except object_store.ObjectStoreError as exc:
        raise FetchError(str(exc)) from exc


def _unfinished_artifact(fs, root: str) -> str | None:
    """The artifact folder (this one or its parent, for `<artifact>/adapter`) that a trainer has
    started publishing but not finished: evaluation.json is there, manifest.json is not."""
    for folder in (root, str(Path(root).parent)):
        if fs.exists(f"{folder}/evaluation.json") and not fs.exists(f"{folder}/manifest.json"):
            return folder
    return None


def run_fetch(args: argparse.Namespace) -> int:
    try:
        count = fetch(args.uri, args.dest)
    except (FetchError, ValueError, OSError) as exc:
        print(f"kubetune fetch: {exc}", file=sys.stderr)
        return 1
    print(f"fetched {count} file(s) from {args.uri} to {args.dest}")
    return 0
