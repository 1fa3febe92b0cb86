"""The cheap per-event paths that let hundreds of jobs arrive at once (see docs/operator.md).

- status-only events (the trainer's progress, our own writes) re-apply nothing;
- kopf keeps no bookkeeping annotations on FineTuneJobs;
- the API queue sends urgent requests (workloads) before deferred ones (bookkeeping);
- a stale child event never moves the status backwards.
"""

from __future__ import annotations

import asyncio

import pytest

from kubetune.operator.handlers_finetunejob import _is_stale, _seen, spec_revision
from kubetune.operator.k8s import _RequestQueue
from kubetune.operator.main import ChangeTrackedDiffBase
from tests.harness.client import wait_for
from tests.operator.helpers import ftj_manifest, wait_phase

pytestmark = pytest.mark.usefixtures("operator_running")


def _writes(k8s_emulator, namespace: str, since: int) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in k8s_emulator.requests()[since:] if m in ("POST", "PATCH", "PUT") and f"/{namespace}/" in p]


def test_status_only_events_reapply_nothing(k8s_emulator, kube_http, kuberay, namespace):
    kube_http.create("finetunejobs", namespace, ftj_manifest("job", namespace))
    wait_phase(kube_http, namespace, "job", "Pending")
    wait_for(lambda: kube_http.get("rolebindings", namespace, "job-status-writer"), 10, message="children applied")
    before = len(k8s_emulator.requests())
    # The trainer reports progress through the status subresource, three times.
    for step in (1, 2, 3):
        kube_http.patch("finetunejobs", namespace, "job", {"status": {"progress": {"step": step}}}, subresource="status")
    kuberay.initializing("job-train")  # a child event afterwards: the operator is still listening
    wait_phase(kube_http, namespace, "job", "Provisioning")
    writes = _writes(k8s_emulator, namespace, before)
    children = [w for w in writes if any(k in w[1] for k in ("/configmaps", "/serviceaccounts", "/roles", "/rolebindings"))]
    assert children == [], children
    # Only the progress patches, KubeRay's and our one status write (+ its Event): no re-apply.
    ours = [w for w in writes if w[0] == "PATCH" and w[1].endswith("/finetunejobs/job/status")]
    assert len(ours) == 4, ours


def test_spec_change_is_reconciled_once_per_generation(k8s_emulator, kube_http, namespace):
    kube_http.create("finetunejobs", namespace, ftj_manifest("job", namespace))
    wait_phase(kube_http, namespace, "job", "Pending")
    kube_http.patch("finetunejobs", namespace, "job", {"spec": {"backoffLimit": 7}})
    wait_for(lambda: kube_http.get("rayjobs", namespace, "job-train")["spec"]["backoffLimit"] == 7, 10,
             message="the new backoffLimit on the RayJob")
    job = kube_http.get("finetunejobs", namespace, "job")
    assert job["metadata"]["generation"] == 2
    wait_for(lambda: job_status(kube_http, namespace).get("observedGeneration") == 2, 10, message="observedGeneration 2")


def job_status(kube_http, namespace):
    return (kube_http.get("finetunejobs", namespace, "job") or {}).get("status") or {}


def test_kopf_keeps_no_bookkeeping_on_finetunejobs(kube_http, namespace):
    kube_http.create("finetunejobs", namespace, ftj_manifest("job", namespace))
    wait_phase(kube_http, namespace, "job", "Pending")
    job = kube_http.get("finetunejobs", namespace, "job")
    annotations = job["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith("kubetune.io/")], annotations
    assert not job["metadata"].get("finalizers")


def test_diffbase_is_kept_only_for_change_tracked_kinds():
    storage = ChangeTrackedDiffBase(prefix="kubetune.io", key="last-handled-configuration")
    import kopf

    ftj = kopf.Body({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "a"}, "spec": {"x": 1}})
    md = kopf.Body({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "a"}, "spec": {"x": 1}})
    assert storage.build(body=ftj) is None and storage.fetch(body=ftj) is None
    assert storage.build(body=md)["spec"] == {"x": 1}


def test_kopf_watches_of_pods_and_deployments_are_filtered_by_the_api_server():
    """Only the ModelDeployments' children: a cluster-wide watch must not stream every pod."""
    import kopf

    from kubetune.operator.main import configure_kopf

    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    selectors = settings.watching.label_selectors
    pods = kopf.Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
    deployments = kopf.Resource(group="apps", version="v1", plural="deployments", kind="Deployment", namespaced=True)
    jobs = kopf.Resource(group="kubetune.io", version="v1alpha1", plural="finetunejobs", kind="FineTuneJob",
                         namespaced=True)
    assert list(selectors.collect(pods)) == ["kubetune.io/modeldeployment"]
    assert list(selectors.collect(deployments)) == ["kubetune.io/modeldeployment"]
    assert list(selectors.collect(jobs)) == []


def test_spec_revision_ignores_status_and_follows_spec_and_labels():
    body = {"metadata": {"uid": "u", "generation": 1, "labels": {"a": "1"}}, "spec": {"x": 1}, "status": {"phase": "Pending"}}
    same = {**body, "status": {"phase": "Training", "progress": {"step": 3}}}
    assert spec_revision(body) == spec_revision(same)
    assert spec_revision(body) != spec_revision({**body, "metadata": {**body["metadata"], "generation": 2}})
    assert spec_revision(body) != spec_revision({**body, "metadata": {**body["metadata"], "labels": {"a": "2"}}})
    # Without generations (not a real API server), the spec itself decides.
    no_gen = {"metadata": {"uid": "u"}, "spec": {"x": 1}}
    assert spec_revision(no_gen) != spec_revision({**no_gen, "spec": {"x": 2}})


def test_stale_child_bodies_are_recognised():
    class Memo(dict):
        pass

    memo = Memo()
    _seen(memo, "ns", "job", {"metadata": {"resourceVersion": "20"}})
    assert _is_stale(memo, "ns", "job", {"metadata": {"resourceVersion": "19"}})
    assert not _is_stale(memo, "ns", "job", {"metadata": {"resourceVersion": "20"}})
    assert not _is_stale(memo, "ns", "job", {"metadata": {"resourceVersion": "21"}})
    assert _is_stale(memo, "ns", "job", {"metadata": {"resourceVersion": "opaque-token"}})  # cannot tell: re-read
    assert not _is_stale(memo, "ns", "other", {"metadata": {"resourceVersion": "1"}})


async def test_request_queue_sends_urgent_first_and_defers_the_rest():
    loop = asyncio.get_running_loop()
    queue = _RequestQueue(loop, defer_window=2.0, max_defer=30)  # wide: a stalled test machine must not release it
    futures = {name: loop.create_future() for name in ("status", "rayjob-1", "event", "rayjob-2")}
    queue.put(1, "status", futures["status"])
    queue.put(0, "rayjob-1", futures["rayjob-1"])
    queue.put(2, "event", futures["event"])
    queue.put(0, "rayjob-2", futures["rayjob-2"])
    order = [(await queue.get())[0] for _ in range(2)]
    assert order == ["rayjob-1", "rayjob-2"]
    # The bookkeeping waits while urgent requests came within the window...
    pending = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.05)
    assert not pending.done()
    # ...an urgent one arriving meanwhile goes ahead of them...
    queue.put(0, "rayjob-3", loop.create_future())
    assert (await pending)[0] == "rayjob-3"
    # ...then the rest, by priority, once urgent requests stopped coming.
    assert [(await queue.get())[0] for _ in range(2)] == ["status", "event"]


async def test_request_queue_bounds_the_deferral():
    loop = asyncio.get_running_loop()
    queue = _RequestQueue(loop, defer_window=60, max_defer=0.1)  # urgent traffic "never" stops
    queue.put(0, "rayjob", loop.create_future())
    queue.put(1, "status", loop.create_future())
    assert (await queue.get())[0] == "rayjob"
    assert (await asyncio.wait_for(queue.get(), 5))[0] == "status"  # released by max_defer, not starved
    assert len(queue.drain()) == 0


async def test_observers_see_every_job_event_and_their_failures_stay_theirs(caplog):
    """Other modules follow FineTuneJobs through the job handler's observers (one kopf handler
    per event); an observer that fails is logged and does not fail the job's handling."""
    import kopf

    from kubetune.operator import handlers_finetunejob as h

    seen = []

    async def records(type, body, memo, **kwargs):
        seen.append((type, body["metadata"]["name"], sorted(kwargs)))

    async def breaks(type, body, memo, **kwargs):
        raise RuntimeError("observer bug")

    memo = kopf.Memo(reconciled={}, locks={}, workload_versions={})
    body = {"metadata": {"name": "gone", "namespace": "ns"}}
    saved = list(h._observers)
    h._observers[:] = [breaks, records]
    try:
        await h.finetunejob_event(type="DELETED", body=body, memo=memo, namespace="ns", name="gone",
                                  some_index={"x": 1})
    finally:
        h._observers[:] = saved
    assert seen == [("DELETED", "gone", ["some_index"])]
    assert "FineTuneJob observer breaks failed on ns/gone" in caplog.text
