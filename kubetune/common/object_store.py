"""Folders on S3 (and S3-compatible stores) through fsspec/s3fs: download, upload, list.

Credentials and the endpoint come from the environment the operator renders: the Secret
named by KUBETUNE_S3_SECRET (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally
AWS_SESSION_TOKEN and AWS_REGION) and AWS_ENDPOINT_URL_S3 for MinIO, Ceph RGW or another
S3-compatible store; botocore reads both itself. Nothing here holds a key.

S3 has no rename, so a folder is published "manifest last": the completion marker (e.g.
`manifest.json`) is removed first, every other file uploaded (large ones in multipart parts),
and the marker written at the end. A reader that sees the marker sees a complete folder.
Downloads land in a temporary sibling renamed into place, so a local copy is whole or absent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_PART_BYTES = 64 * 1024 * 1024
"""Files above twice this size are uploaded in parts of this size (KUBETUNE_S3_PART_BYTES)."""
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part


class ObjectStoreError(RuntimeError):
    """A remote folder that cannot be read or written; the message names the URI."""


def is_remote(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith("s3://")


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path without the scheme) for an s3:// URI."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri.rstrip("/"))
    except ImportError as exc:
        raise ObjectStoreError(f"{uri}: s3:// needs the s3fs package in this image ({exc})") from exc


def part_bytes(environ: dict[str, str] | None = None) -> int:
    value = (environ if environ is not None else os.environ).get("KUBETUNE_S3_PART_BYTES")
    if not value:
        return DEFAULT_PART_BYTES
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < MIN_PART_BYTES:
        raise ObjectStoreError(f"KUBETUNE_S3_PART_BYTES={value!r}: an integer of at least {MIN_PART_BYTES} (5 MiB)")
    return size


def _wrap(uri: str, exc: Exception) -> ObjectStoreError:
    return ObjectStoreError(f"{uri}: {type(exc).__name__}: {exc} (check the bucket, the credentials Secret "
                            "(KUBETUNE_S3_SECRET) and the endpoint (AWS_ENDPOINT_URL_S3))")


def exists(uri: str) -> bool:
    fs, root = filesystem(uri)
    try:
        return bool(fs.exists(root))
    except Exception as exc:  # botocore raises many types; all mean "cannot tell"
        raise _wrap(uri, exc) from exc


def list_dirs(uri: str) -> list[str]:
    """Names of the sub-folders directly under `uri` ([] when it does not exist)."""
    fs, root = filesystem(uri)
    try:
        fs.invalidate_cache(root)
        if not fs.exists(root):
            return []
        return sorted(Path(entry["name"]).name for entry in fs.ls(root, detail=True) if entry["type"] == "directory")
    except Exception as exc:
        raise _wrap(uri, exc) from exc


def download_tree(uri: str, dest: Path, *, skip_suffixes: Sequence[str] = ()) -> int:
    """Copy the folder (or file) at `uri` to `dest` atomically; returns the number of files.

    Files ending in `skip_suffixes` are left out. When `dest` appears meanwhile (another process
    on the same disk fetched it), that copy is kept.
    """
    fs, root = filesystem(uri)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.download-{uuid.uuid4().hex[:8]}"
    try:
        fs.invalidate_cache(root)
        if not fs.exists(root):
            raise ObjectStoreError(f"{uri}: not found (check the bucket, prefix and credentials)")
        tmp.mkdir()
        if fs.isdir(root):
            files = [f for f in fs.find(root) if not fs.isdir(f) and not f.endswith(tuple(skip_suffixes))]
            for remote in files:
                local = tmp / Path(remote).relative_to(Path(root))
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
        else:
            files = [root]
            fs.get_file(root, str(tmp / Path(root).name))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():
                raise
        return len(files)
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise _wrap(uri, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_copy(uri: str, cache_root: Path, *, skip_suffixes: Sequence[str] = ()) -> Path:
    """A local copy of a remote folder under `cache_root`, named by the URI: fetched once per disk."""
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    dest = Path(cache_root) / f"{Path(uri.rstrip('/')).name}-{digest}"
    if not dest.is_dir():
        download_tree(uri, dest, skip_suffixes=skip_suffixes)
    return dest


def upload_tree(local: Path, uri: str, *, last: Sequence[str] = (), part_size: int | None = None) -> int:
    """Publish a local folder at `uri`: files named in `last` (relative paths) are removed from
    the remote first and uploaded after every other file. Returns the number of files."""
    fs, root = filesystem(uri)
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    relative = [p.relative_to(local).as_posix() for p in files]
    markers = [name for name in last if name in relative]
    chunk = part_size or part_bytes()
    try:
        for name in markers:
            if fs.exists(f"{root}/{name}"):
                fs.rm(f"{root}/{name}")
        for path, name in sorted(zip(files, relative), key=lambda item: item[1] in markers):
            fs.put_file(str(path), f"{root}/{name}", chunksize=chunk)
        fs.invalidate_cache(root)
    except Exception as exc:
        raise _wrap(uri, exc) from exc
    return len(files)


def remove_tree(uri: str) -> None:
    fs, root = filesystem(uri)
    try:
        if fs.exists(root):
            fs.rm(root, recursive=True)
        fs.invalidate_cache(root)
    except Exception as exc:
        raise _wrap(uri, exc) from exc
