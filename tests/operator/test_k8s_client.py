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
