"""Whether the claims a FineTuneJob writes to can be mounted by every pod that writes them.

A RayJob mounts each writable claim (output, checkpoints) in its head, every worker and the
submitter: Ray Train's storage_path is on it and each worker writes its checkpoint shards
there. A ReadWriteOnce volume attaches to one node, so those pods must all land on that node
(fine on a one-node cluster, a Multi-Attach error elsewhere); ReadWriteOncePod admits a single
pod, so the RayJob can never run. The check is pure; the handler reads the claims and reports
the result as the `SharedStorage` condition (a warning, not a refusal: one-node clusters work).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api import FineTuneJob

from .conditions import condition
from .render_training import pvc_claims

CONDITION = "SharedStorage"
READ_WRITE_MANY = "ReadWriteMany"
READ_WRITE_ONCE_POD = "ReadWriteOncePod"


def writable_claims(job: FineTuneJob) -> list[str]:
    """Claims the training pods write to, in render order."""
    return [claim for claim, writable in pvc_claims(job).items() if writable]


def needs_shared_claims(job: FineTuneJob) -> bool:
    """More than one pod mounts the writable claims: every RayJob (head, workers, submitter)."""
    return job.spec.engine == "RayJob"


def shared_storage_condition(job: FineTuneJob, claims: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """The SharedStorage condition from the job and its writable claims as read (None: absent)."""
    pods = f"the head, {job.spec.resources.workers} worker(s) and the submitter"
    problems: list[tuple[str, str]] = []
    for name in writable_claims(job):
        claim = claims.get(name)
        if claim is None:
            problems.append(("ClaimNotFound", f"PersistentVolumeClaim {name} does not exist; the pods wait for it"))
            continue
        modes = set(((claim.get("status") or {}).get("accessModes")) or (claim.get("spec") or {}).get("accessModes") or [])
        if READ_WRITE_MANY in modes:
            continue
        if READ_WRITE_ONCE_POD in modes:
            problems.append(("ReadWriteOncePodClaim",
                             f"PersistentVolumeClaim {name} is ReadWriteOncePod: only one pod may mount it, but "
                             f"{pods} all write to it, so the RayJob cannot start; use a ReadWriteMany "
                             "claim (NFS, CephFS, EFS, Filestore, ...) or spec.engine: Job"))
            continue
        problems.append(("ReadWriteOnceClaim",
                         f"PersistentVolumeClaim {name} is {'/'.join(sorted(modes)) or 'without access modes'}, not "
                         f"ReadWriteMany: {pods} write to it (Ray Train checkpoints), so they must all "
                         "run on the one node it attaches to; on more nodes pods stay ContainerCreating with a "
                         "Multi-Attach error. Use a ReadWriteMany claim (docs/real-cluster.md)"))
    if not problems:
        names = ", ".join(writable_claims(job)) or "none"
        return condition(CONDITION, True, "ReadWriteMany", f"writable claims are shared by every training pod: {names}")
    reason = next((r for r in ("ReadWriteOncePodClaim", "ReadWriteOnceClaim", "ClaimNotFound")
                   if r in {p[0] for p in problems}))
    return condition(CONDITION, False, reason, "; ".join(message for _, message in problems))
