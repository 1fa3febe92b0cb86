"""The emulator behaves like an API server where kopf, kubectl and our client depend on it."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.harness.client import object_path, wait_for


def _ftj(name: str, ns: str) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"baseModel": {"uri": "org/m"}, "datasets": [{"name": "d", "uri": "d.jsonl", "format": "alpaca"}],
                 "output": {"uri": "pvc://out/x"}},
        "status": {"phase": "Succeeded"},
    }


def test_create_sets_server_metadata_and_drops_status(kube_http, namespace):
    obj = kube_http.create("finetunejobs", namespace, _ftj("a", namespace))
    meta = obj["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert "status" not in obj  # status subresource: create ignores status


def test_resource_version_and_generation(kube_http, namespace):
    rv0 = int(kube_http.create("finetunejobs", namespace, _ftj("b", namespace))["metadata"]["resourceVersion"])
    meta_only = kube_http.patch("finetunejobs", namespace, "b", {"metadata": {"labels": {"x": "1"}}})
    assert int(meta_only["metadata"]["resourceVersion"]) > rv0
    assert meta_only["metadata"]["generation"] == 1  # metadata change: same generation
    spec_change = kube_http.patch("finetunejobs", namespace, "b", {"spec": {"suspend": True}})
    assert spec_change["metadata"]["generation"] == 2
    noop = kube_http.patch("finetunejobs", namespace, "b", {"spec": {"suspend": True}})
    assert noop["metadata"]["resourceVersion"] == spec_change["metadata"]["resourceVersion"]


def test_status_subresource_semantics(kube_http, namespace):
    kube_http.create("finetunejobs", namespace, _ftj("c", namespace))
    after_status = kube_http.patch_status("finetunejobs", namespace, "c", {"phase": "Training"})
    assert after_status["status"] == {"phase": "Training"} and after_status["metadata"]["generation"] == 1
    # The main resource ignores status; /status ignores everything else.
    main = kube_http.patch("finetunejobs", namespace, "c", {"status": {"phase": "Failed"}, "spec": {"suspend": True}})
    assert main["status"] == {"phase": "Training"} and main["spec"]["suspend"] is True
    sub = kube_http.patch("finetunejobs", namespace, "c", {"spec": {"suspend": False}, "status": {"phase": "Evaluating"}},
                          subresource="status")
    assert sub["spec"]["suspend"] is True and sub["status"]["phase"] == "Evaluating"


def test_failed_json_patch_test_is_422_not_500(k8s_emulator, kube_http, namespace):
    obj = kube_http.create("finetunejobs", namespace, _ftj("d", namespace))
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
           {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    resp = httpx.patch(k8s_emulator.url + object_path("finetunejobs", namespace, "d"), content=json.dumps(ops),
                       headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 422 and resp.json()["kind"] == "Status"
    ops[0]["value"] = obj["metadata"]["resourceVersion"]
    resp = httpx.patch(k8s_emulator.url + object_path("finetunejobs", namespace, "d"), content=json.dumps(ops),
                       headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 200 and resp.json()["metadata"]["finalizers"] == ["x"]


def test_put_with_stale_resource_version_conflicts(k8s_emulator, kube_http, namespace):
    obj = kube_http.create("configmaps", namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    kube_http.patch("configmaps", namespace, "cm", {"data": {"a": "2"}})
    obj["data"] = {"a": "3"}
    resp = httpx.put(k8s_emulator.url + object_path("configmaps", namespace, "cm"), json=obj)
    assert resp.status_code == 409 and resp.json()["reason"] == "Conflict"


def test_create_twice_is_already_exists(k8s_emulator, kube_http, namespace):
    kube_http.create("configmaps", namespace, {"metadata": {"name": "dup"}})
    resp = httpx.post(k8s_emulator.url + object_path("configmaps", namespace), json={"metadata": {"name": "dup"}})
    assert resp.status_code == 409 and resp.json()["reason"] == "AlreadyExists"


def test_list_has_kind_and_label_selector(kube_http, namespace, k8s_emulator):
    kube_http.create("configmaps", namespace, {"metadata": {"name": "l1", "labels": {"app": "x", "tier": "a"}}})
    kube_http.create("configmaps", namespace, {"metadata": {"name": "l2", "labels": {"app": "y"}}})
    resp = httpx.get(k8s_emulator.url + object_path("configmaps", namespace), params={"labelSelector": "app=x,tier"}).json()
    assert resp["kind"] == "ConfigMapList" and resp["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in resp["items"]] == ["l1"]
    assert [i["metadata"]["name"] for i in kube_http.list("configmaps", namespace, "app in (x, y),!tier")] == ["l2"]


def test_core_discovery_group_version(k8s_emulator):
    assert httpx.get(k8s_emulator.url + "/api/v1").json()["groupVersion"] == "v1"
    names = {r["name"] for r in httpx.get(k8s_emulator.url + "/apis/ray.io/v1").json()["resources"]}
    assert {"rayjobs", "rayjobs/status"} <= names


def test_finalizers_block_deletion_until_removed(kube_http, namespace):
    body = {"metadata": {"name": "f", "finalizers": ["example.com/x"]}}
    kube_http.create("configmaps", namespace, body)
    assert kube_http.delete("configmaps", namespace, "f") == 200
    marked = kube_http.get("configmaps", namespace, "f")
    assert marked["metadata"]["deletionTimestamp"]
    kube_http.patch("configmaps", namespace, "f", {"metadata": {"finalizers": None}})
    assert kube_http.get("configmaps", namespace, "f") is None


def test_owner_reference_garbage_collection(kube_http, namespace):
    owner = kube_http.create("finetunejobs", namespace, _ftj("owner", namespace))
    ref = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "owner",
           "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    kube_http.create("configmaps", namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    kube_http.create("configmaps", namespace, {"metadata": {"name": "bystander"}})
    kube_http.delete("finetunejobs", namespace, "owner")
    assert kube_http.get("configmaps", namespace, "child") is None
    assert kube_http.get("configmaps", namespace, "bystander") is not None
    # Created after its owner is gone (a late reconcile): collected too.
    kube_http.create("configmaps", namespace, {"metadata": {"name": "late", "ownerReferences": [ref]}})
    assert kube_http.get("configmaps", namespace, "late") is None


def _watch(url: str, params: dict, events: list, stop_after: int) -> None:
    with httpx.stream("GET", url, params={"watch": "true", **params}, timeout=10) as resp:
        for line in resp.iter_lines():
            if line:
                events.append(json.loads(line))
                if len(events) >= stop_after:
                    return


def test_watch_starts_from_resource_version(k8s_emulator, kube_http, namespace):
    kube_http.create("configmaps", namespace, {"metadata": {"name": "w1"}})
    listed = httpx.get(k8s_emulator.url + object_path("configmaps", namespace)).json()
    rv = listed["metadata"]["resourceVersion"]
    events: list = []
    thread = threading.Thread(target=_watch, args=(k8s_emulator.url + object_path("configmaps", namespace),
                                                    {"resourceVersion": rv}, events, 1))
    thread.start()
    kube_http.create("configmaps", namespace, {"metadata": {"name": "w2"}})
    thread.join(10)
    # Not replayed: w1 existed before the resourceVersion the watch started from.
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w2")]


def test_fault_injection_and_dropped_watch(k8s_emulator, kube_http, namespace):
    k8s_emulator.fail_next("POST", rf"/namespaces/{namespace}/configmaps$", 500)
    with pytest.raises(httpx.HTTPStatusError) as err:
        kube_http.create("configmaps", namespace, {"metadata": {"name": "flaky"}})
    assert err.value.response.status_code == 500
    kube_http.create("configmaps", namespace, {"metadata": {"name": "flaky"}})  # the next one passes
    events: list = []
    thread = threading.Thread(target=_watch, args=(k8s_emulator.url + object_path("configmaps", namespace), {}, events, 999))
    thread.start()
    wait_for(lambda: len(events) >= 1, 5)
    wait_for(lambda: k8s_emulator.drop_watches() >= 0 and not thread.join(0.2) and not thread.is_alive(), 5)
    assert {e["object"]["metadata"]["name"] for e in events} >= {"flaky"}


def test_fault_after_write_keeps_the_change(k8s_emulator, kube_http, namespace):
    """A lost answer: the client hears 500, the object exists, a retried create meets 409."""
    k8s_emulator.fail_next("POST", rf"/namespaces/{namespace}/configmaps$", 500, after_write=True)
    with pytest.raises(httpx.HTTPStatusError) as err:
        kube_http.create("configmaps", namespace, {"metadata": {"name": "lost-answer"}})
    assert err.value.response.status_code == 500
    assert kube_http.get("configmaps", namespace, "lost-answer") is not None
    with pytest.raises(httpx.HTTPStatusError) as err:
        kube_http.create("configmaps", namespace, {"metadata": {"name": "lost-answer"}})
    assert err.value.response.status_code == 409


def test_table_output_uses_printer_columns(k8s_emulator, kube_http, namespace):
    kube_http.create("finetunejobs", namespace, _ftj("tbl", namespace))
    kube_http.patch_status("finetunejobs", namespace, "tbl", {"phase": "Training", "progress": {"step": 7, "loss": 0.5}})
    table = httpx.get(k8s_emulator.url + object_path("finetunejobs", namespace),
                      headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[:3] == ["Name", "Phase", "Method"] and "Loss" in names
    row = dict(zip(names, table["rows"][0]["cells"]))
    assert row["Name"] == "tbl" and row["Phase"] == "Training" and row["Progress"] == 7 and row["Loss"] == 0.5


def test_builtin_namespaces_exist_like_on_a_real_cluster(kube_http):
    """kopf watching `-n default` lists namespaces first: without these it would watch nothing."""
    assert {"default", "kube-system"} <= {ns["metadata"]["name"] for ns in kube_http.list("namespaces", None)}
