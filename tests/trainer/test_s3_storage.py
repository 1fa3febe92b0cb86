"""s3:// for the base model, datasets, checkpoints and the artifact, against a real S3 API:
moto's server on 127.0.0.1 (botocore signs and sends real HTTP; AWS_ENDPOINT_URL_S3 points it
there, as the operator renders for MinIO). The pipeline runs in-process (use_ray=False, the
same loop); a "new pod" is a fresh local cache folder."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from kubetune.common import object_store
from kubetune.fetch import FetchError, fetch
from kubetune.trainer import checkpoint_remote, pipeline
from kubetune.trainer import loop as loop_mod

BUCKET = "kubetune-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3(s3_endpoint, monkeypatch, tmp_path):
    """A fresh bucket; credentials and endpoint only in the environment, as in a pod."""
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_S3": s3_endpoint, "KUBETUNE_REMOTE_CACHE": str(tmp_path / "pod-a")}.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    return fs


def _artifact(folder, size: int):
    folder.mkdir(parents=True)
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * size)
    (folder / "evaluation.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps({"artifact": {"kind": "adapter"}}))
    return folder


def test_publication_writes_the_manifest_last_and_large_files_in_parts(s3, tmp_path, monkeypatch):
    import boto3

    order = []
    original = s3.put_file
    assert object_store.filesystem(f"s3://{BUCKET}")[0] is s3  # fsspec's cached instance: the one patched

    def recording(lpath, rpath, **kw):
        order.append(rpath)
        return original(lpath, rpath, **kw)

    monkeypatch.setattr(s3, "put_file", recording)
    local = _artifact(tmp_path / "art", 12 * 1024 * 1024)
    assert object_store.upload_tree(local, f"s3://{BUCKET}/runs/a", last=("manifest.json",),
                                    part_size=object_store.MIN_PART_BYTES) == 3
    assert order[-1] == f"{BUCKET}/runs/a/manifest.json"
    client = boto3.client("s3")
    etag = client.head_object(Bucket=BUCKET, Key="runs/a/adapter/adapter_model.safetensors")["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart upload of three 5 MiB-or-less parts
    fetched = tmp_path / "fetched"
    assert fetch(f"s3://{BUCKET}/runs/a/adapter", fetched) == 1
    assert (fetched / "adapter_model.safetensors").stat().st_size == 12 * 1024 * 1024


def test_a_failed_republication_is_never_seen_as_complete(s3, tmp_path, monkeypatch):
    local = _artifact(tmp_path / "art", 1024)
    object_store.upload_tree(local, f"s3://{BUCKET}/runs/b", last=("manifest.json",))
    original = s3.put_file
    calls = []

    def flaky(lpath, rpath, **kw):
        calls.append(rpath)
        if len(calls) == 2:
            raise ConnectionError("connection reset by peer")
        return original(lpath, rpath, **kw)

    monkeypatch.setattr(s3, "put_file", flaky)
    with pytest.raises(object_store.ObjectStoreError, match=f"s3://{BUCKET}/runs/b: ConnectionError"):
        object_store.upload_tree(local, f"s3://{BUCKET}/runs/b", last=("manifest.json",))
    assert not s3.exists(f"{BUCKET}/runs/b/manifest.json")  # the old manifest went first
    for uri in (f"s3://{BUCKET}/runs/b", f"s3://{BUCKET}/runs/b/adapter"):
        with pytest.raises(FetchError, match="has no manifest.json yet"):
            fetch(uri, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_remote_checkpoints_count_once_their_meta_is_there_and_are_pruned(s3, tmp_path):
    from kubetune.trainer import checkpoint as ckpt
    import torch

    remote = f"s3://{BUCKET}/ckpt"
    for step in (2, 4, 6):
        ref = ckpt.save_checkpoint(tmp_path / "local", step, trainable={"w": torch.full((2,), float(step))},
                                   optimizer={"state": {}}, meta={}, keep_last=3)
        checkpoint_remote.publish(ref, remote, keep_last=2)
    assert checkpoint_remote.remote_steps(remote) == [4, 6]
    s3.pipe(f"{BUCKET}/ckpt/step-00000008/trainable.pt", b"half")  # an upload cut before meta.json
    assert checkpoint_remote.remote_steps(remote) == [4, 6]
    pulled = checkpoint_remote.pull_latest(remote, tmp_path / "new-pod")
    assert pulled.step == 6 and torch.equal(ckpt.load_trainable(pulled)["w"], torch.full((2,), 6.0))


def test_a_job_on_s3_resumes_in_a_new_pod_and_publishes_its_artifact(s3, make_job, tiny_model_dir, tmp_path, monkeypatch):
    """Base model, dataset, checkpoints and output all on s3://; the first pod dies after step 3
    (its disk is gone), the second resumes from the checkpoint of step 2 kept in S3."""
    s3.put(str(tiny_model_dir), f"{BUCKET}/models/tiny", recursive=True)
    rows = [{"instruction": f"say {n}", "output": f"{n}"} for n in range(16)]
    s3.pipe(f"{BUCKET}/data/train.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    s3.pipe(f"{BUCKET}/data/prompts.jsonl", b'{"prompt": "say 3", "reference": "3"}\n')
    job = make_job({
        "baseModel": {"uri": f"s3://{BUCKET}/models/tiny"},
        "datasets": [{"name": "qa", "uri": f"s3://{BUCKET}/data/train.jsonl", "format": "alpaca"}],
        "checkpointing": {"uri": f"s3://{BUCKET}/runs/tiny/checkpoints", "everySteps": 2, "keepLast": 2},
        "output": {"uri": f"s3://{BUCKET}/runs/tiny/artifact"},
        "hyperparameters": {"maxSteps": 6, "batchSize": 2},
        "preprocessing": {"validationSplit": 0.25},
        "evaluation": {"metrics": ["loss", "exactMatch"], "promptsUri": f"s3://{BUCKET}/data/prompts.jsonl",
                       "maxNewTokens": 4},
    })

    model_dir, tokenizer = pipeline.preflight(job)
    assert str(model_dir).startswith(str(tmp_path / "pod-a"))
    data = pipeline.prepare_data(job, tokenizer, base_dir=None)
    checkpoints = pipeline.checkpoint_dir_of(job, pipeline.output_dir_of(job, None))
    with pytest.raises(loop_mod.SimulatedFailure):
        pipeline.train(job, model_dir=model_dir, train_samples=data.train, pad_id=tokenizer.pad_token_id,
                       checkpoint_dir=checkpoints, local=True, use_ray=False, fail_after_step=3)
    assert checkpoint_remote.remote_steps(f"s3://{BUCKET}/runs/tiny/checkpoints") == [2]
    shutil.rmtree(tmp_path / "pod-a")  # the pod is gone with its emptyDir

    monkeypatch.setenv("KUBETUNE_REMOTE_CACHE", str(tmp_path / "pod-b"))
    result = pipeline.run(job, local=True, use_ray=False)
    assert result.training.start_step == 2 and len(result.training.losses) == 6
    assert checkpoint_remote.remote_steps(f"s3://{BUCKET}/runs/tiny/checkpoints") == [4, 6]
    manifest = json.loads(s3.cat(f"{BUCKET}/runs/tiny/artifact/manifest.json"))
    assert manifest["artifact"]["kind"] == "adapter"
    assert s3.exists(f"{BUCKET}/runs/tiny/artifact/adapter/adapter_model.safetensors")
    assert s3.exists(f"{BUCKET}/runs/tiny/artifact/dataset_report.json")
    report = json.loads(s3.cat(f"{BUCKET}/runs/tiny/artifact/dataset_report.json"))
    assert f"s3://{BUCKET}/data/train.jsonl" in json.dumps(report)
    assert result.status["artifact"]["uri"] == f"s3://{BUCKET}/runs/tiny/artifact"
    assert "exactMatch" in result.status["evaluation"]["metrics"]  # the prompts came from S3
    served = tmp_path / "served"
    fetch(f"s3://{BUCKET}/runs/tiny/artifact/adapter", served)
    assert (served / "adapter_config.json").is_file()
