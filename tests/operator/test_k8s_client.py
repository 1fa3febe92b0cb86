"""operator.k8s against the emulator: typed errors, idempotent apply, discovery."""

from __future__ import annotations

import kopf
import pytest

from kubetune.operator.k8s import (
    KINDS,
    AlreadyExists,
    Conflict,
    Forbidden,
    Invalid,
    KubeApi,
    NotFound,
    ServerError,
    error_for,
    load_api_client,
)


@pytest.fixture()
async def api(k8s_emulator):
    client = KubeApi(load_api_client(str(k8s_emulator.kubeconfig)), threads=4)
    yield client
    await client.stop_workers()
    client.close()


def test_error_types():
    assert isinstance(error_for(404, "NotFound", "x"), NotFound)
    conflict = error_for(409, "Conflict", "x")
    assert isinstance(conflict, Conflict) and isinstance(conflict, kopf.TemporaryError)
    assert isinstance(error_for(409, "AlreadyExists", "x"), AlreadyExists)
    assert isinstance(error_for(422, "Invalid", "x"), Invalid) and not isinstance(error_for(422, "Invalid", "x"), kopf.TemporaryError)
    assert isinstance(error_for(403, "Forbidden", "x"), Forbidden)
    for status in (429, 500, 503, 0):
        err = error_for(status, "", "x", method="GET", path="/api/v1/pods")
        assert isinstance(err, ServerError) and isinstance(err, kopf.TemporaryError) and "/api/v1/pods" in str(err)


def _cm(namespace, labels):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "namespace": namespace, "labels": labels},
            "data": {"k": "v1"}}


async def test_apply_creates_then_patches(api, namespace):
    first, created = await api.apply(_cm(namespace, {"a": "1"}))
    assert created and first["data"] == {"k": "v1"}
    changed = _cm(namespace, {"a": "2"})
    changed["data"] = {"k": "v2"}
    second, created = await api.apply(changed)
    assert not created and second["data"] == {"k": "v2"} and second["metadata"]["labels"] == {"a": "2"}
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert len(await api.list(KINDS["ConfigMap"], namespace)) == 1


async def test_get_delete_and_missing(api, namespace):
    assert await api.get(KINDS["ConfigMap"], namespace, "nope") is None
    assert await api.delete(KINDS["ConfigMap"], namespace, "nope") is False
    with pytest.raises(NotFound):
        await api.patch(KINDS["ConfigMap"], namespace, "nope", {"data": {}})


async def test_server_errors_are_temporary(api, k8s_emulator, namespace):
    k8s_emulator.fail_next("GET", rf"/namespaces/{namespace}/configmaps/x$", 503)
    with pytest.raises(ServerError) as err:
        await api.get(KINDS["ConfigMap"], namespace, "x")
    assert isinstance(err.value, kopf.TemporaryError) and err.value.status == 503


async def test_discovery(api):
    assert await api.has_resource("ray.io/v1", "rayjobs")
    assert await api.has_resource("v1", "configmaps")
    assert not await api.has_resource("example.com/v1", "widgets")


async def test_watch_streams_events_from_a_version_with_the_selector(api, namespace):
    listed = await api.call("GET", KINDS["ConfigMap"].path(namespace))
    since = listed["metadata"]["resourceVersion"]
    await api.create(_cm(namespace, {"kubetune.io/finetunejob": "a"}))
    other = _cm(namespace, {})
    other["metadata"]["name"] = "unlabelled"
    await api.create(other)
    events = []
    stream = api.watch(KINDS["ConfigMap"], namespace, resource_version=since,
                       label_selector="kubetune.io/finetunejob", timeout_seconds=1)
    async for event in stream:
        events.append((event["type"], event["object"]["metadata"]["name"]))
    assert events == [("ADDED", "applied")]  # the server ended the stream after timeoutSeconds


async def test_watch_of_a_kind_that_is_not_served_raises_not_found(api, namespace):
    from kubetune.operator.k8s import Resource

    with pytest.raises(NotFound):
        async for _ in api.watch(Resource("example.com/v1", "widgets"), namespace, resource_version="0"):
            pass
