"""Checkpoints kept on S3: each local checkpoint is mirrored to `spec.checkpointing.uri`.

Training writes checkpoints to a local folder as always (atomic rename, checkpoint.py). With an
s3:// checkpointing URI, rank 0 then uploads each one to `<uri>/step-XXXXXXXX/` with meta.json
last (a remote checkpoint counts only once its meta.json is there) and prunes the remote copies
down to keepLast. A restarted run, on any pod, first pulls the newest complete remote
checkpoint into its local folder, so resume works the same whether the disk survived or not.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kubetune.common import object_store

from . import checkpoint as ckpt

log = logging.getLogger(__name__)


def remote_steps(remote_root: str) -> list[int]:
    """Steps of the complete remote checkpoints, oldest first."""
    steps = []
    for name in object_store.list_dirs(remote_root):
        step = ckpt.step_of(name)
        if step is not None and object_store.exists(f"{remote_root.rstrip('/')}/{name}/{ckpt.META}"):
            steps.append(step)
    return sorted(steps)


def publish(ref: ckpt.CheckpointRef, remote_root: str, *, keep_last: int) -> str:
    """Upload one local checkpoint (meta.json last) and prune older remote ones; its URI."""
    root = remote_root.rstrip("/")
    target = f"{root}/{ckpt.step_dir_name(ref.step)}"
    object_store.upload_tree(ref.path, target, last=(ckpt.META,))
    for step in remote_steps(root)[:-keep_last]:
        object_store.remove_tree(f"{root}/{ckpt.step_dir_name(step)}")
    log.info("checkpoint uploaded: %s", target)
    return target


def pull_latest(remote_root: str, local_root: str | Path) -> ckpt.CheckpointRef | None:
    """Bring the newest complete remote checkpoint into `local_root` unless a local one is as new."""
    steps = remote_steps(remote_root)
    local = ckpt.latest_checkpoint(local_root)
    if not steps or (local is not None and local.step >= steps[-1]):
        return local
    name = ckpt.step_dir_name(steps[-1])
    dest = Path(local_root) / name
    object_store.download_tree(f"{remote_root.rstrip('/')}/{name}", dest)
    log.info("resuming from %s/%s", remote_root.rstrip("/"), name)
    return ckpt.latest_checkpoint(local_root)
