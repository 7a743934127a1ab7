"""The artifact store on a real S3-compatible server (moto's, over HTTP): the same
guarantees as the local directory."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from maas import crypto
from maas.api.app import create_app
from maas.cli.main import app
from maas.config import Settings
from maas.errors import IntegrityError, UnavailableError
from maas.registry.artifacts import ArtifactStore, open_store
from maas.registry.blobstore_s3 import S3BlobBackend, parse_s3_url
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from tests.helpers import make_hf_dir
from tests.s3 import object_keys, s3_env, s3_settings

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MIB = 1024 * 1024


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def model_with(root: Path, payload: bytes) -> Path:
    """A tiny HF model directory plus one file holding ``payload``."""
    make_hf_dir(root)
    (root / "extra.dat").write_bytes(payload)
    return root


def extra_sha(info: VersionInfo) -> str:
    return next(f.sha256 for f in info.files or [] if f.path == "extra.dat")


def blob_keys(s3: S3Client, bucket: str) -> list[str]:
    return object_keys(s3, bucket, "blobs/sha256/")


def test_s3_urls_name_a_bucket_and_an_optional_prefix() -> None:
    assert parse_s3_url("s3://b/models/maas/") == ("b", "models/maas/")
    assert parse_s3_url("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="bucket"):
        Settings(artifact_url="s3:///nobucket")
    with pytest.raises(ValueError, match="MAAS_ARTIFACT_URL"):
        Settings(artifact_url="ftp://x/y")


def test_push_stores_blobs_in_the_bucket_and_materialize_returns_identical_files(
    s3_registry: Registry, s3: S3Client, bucket: str, hf_dir: Path, home: Path
) -> None:
    info = s3_registry.push(hf_dir, "m", task="text-classification")
    keys = blob_keys(s3, bucket)
    assert len(keys) == len(tree(hf_dir))
    assert {k.rpartition("/")[2] for k in keys} == {f.sha256 for f in info.files or []}
    assert not (home / "blobs").exists()  # nothing in the local directory store
    assert tree(s3_registry.materialize("m")) == tree(hf_dir)
    assert s3_registry.check_consistency(deep=True) == []


def test_identical_content_is_uploaded_once(
    s3_registry: Registry, s3: S3Client, bucket: str, hf_dir: Path
) -> None:
    s3_registry.push(hf_dir, "a", task="text-classification")
    before = blob_keys(s3, bucket)
    s3_registry.push(hf_dir, "b", task="text-classification")
    assert blob_keys(s3, bucket) == before
    # The reuse is recorded (gc's grace period restarts), not a second upload.
    assert len(object_keys(s3, bucket, "blobs/touched/")) == len(before)


def test_a_corrupted_object_is_detected_on_every_read(
    s3_registry: Registry, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    model = model_with(tmp_path / "model", b"weights" * 1000)
    info = s3_registry.push(model, "m", task="text-classification")
    sha = extra_sha(info)
    key = f"blobs/sha256/{sha[:2]}/{sha}"
    s3.put_object(Bucket=bucket, Key=key, Body=b"WEIGHTS" * 1000)  # same size, other bytes

    with pytest.raises(IntegrityError, match="corrupted"):
        s3_registry.materialize("m")
    assert not any(s3_registry.settings.cache_dir.iterdir())  # no partial version left
    with pytest.raises(IntegrityError):
        b"".join(s3_registry.iter_version_tar("m"))
    assert any("corrupted" in p for p in s3_registry.check_consistency(deep=True))


def test_a_missing_object_is_an_integrity_error(
    s3_registry: Registry, s3: S3Client, bucket: str, hf_dir: Path
) -> None:
    s3_registry.push(hf_dir, "m", task="text-classification")
    s3.delete_object(Bucket=bucket, Key=blob_keys(s3, bucket)[0])
    with pytest.raises(IntegrityError, match="missing"):
        s3_registry.materialize("m")
    assert any("blob missing" in p for p in s3_registry.check_consistency())


def test_big_files_go_up_in_parts_and_stream_back(
    home: Path, s3_endpoint: str, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    settings = s3_settings(home, s3_endpoint, bucket, s3_part_bytes=5 * MIB)
    reg = Registry(settings)
    try:
        data = os.urandom(12 * MIB + 3)
        info = reg.push(model_with(tmp_path / "big", data), "big", task="text-classification")
        sha = extra_sha(info)
        head = s3.head_object(Bucket=bucket, Key=f"blobs/sha256/{sha[:2]}/{sha}")
        assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts
        assert (reg.materialize("big") / "extra.dat").read_bytes() == data
    finally:
        reg.close()


def test_encryption_is_applied_before_upload_and_round_trips(
    home: Path, s3_endpoint: str, s3: S3Client, bucket: str, hf_dir: Path
) -> None:
    reg = Registry(s3_settings(home, s3_endpoint, bucket, master_key=KEY.hex()))
    try:
        reg.push(hf_dir, "m", task="text-classification")
        plain = set(tree(hf_dir).values())
        for key in blob_keys(s3, bucket):
            stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert stored.startswith(crypto.MAGIC)
            assert stored not in plain
        assert tree(reg.materialize("m")) == tree(hf_dir)
        with tarfile.open(fileobj=io.BytesIO(b"".join(reg.iter_version_tar("m")))) as tar:
            names = set(tar.getnames())
        assert names == set(tree(hf_dir))
        assert reg.check_consistency(deep=True) == []
    finally:
        reg.close()


def test_rotating_the_master_key_rewrites_the_objects_headers(
    home: Path, s3_endpoint: str, bucket: str, hf_dir: Path
) -> None:
    settings = s3_settings(home, s3_endpoint, bucket, master_key=KEY.hex())
    reg = Registry(settings)
    try:
        reg.push(hf_dir, "m", task="text-classification")
        manifest = reg.manifest("m")
    finally:
        reg.close()
    result = open_store(settings).rewrap_keys(OTHER_KEY)
    assert result.rewrapped == len(manifest.files) and result.plaintext == 0
    assert open_store(settings).rewrap_keys(OTHER_KEY).already == len(manifest.files)
    rotated = open_store(settings, master_key=OTHER_KEY)
    out = rotated.materialize(manifest, home / "out")
    assert tree(out) == tree(hf_dir)


def test_gc_removes_unreferenced_objects_and_keeps_referenced_ones(
    s3_registry: Registry, s3: S3Client, bucket: str, hf_dir: Path, tmp_path: Path
) -> None:
    s3_registry.push(hf_dir, "keep", task="text-classification")
    other = model_with(tmp_path / "other", b"only in the deleted version")
    s3_registry.push(other, "gone", task="text-classification")
    s3_registry.delete_model("gone", force=True)
    before = len(blob_keys(s3, bucket))
    result = s3_registry.gc()
    assert result.removed_blobs == 1 and result.kept_blobs == before - 1
    assert result.freed_bytes == len(b"only in the deleted version")
    assert len(blob_keys(s3, bucket)) == before - 1
    assert tree(s3_registry.materialize("keep")) == tree(hf_dir)


def test_gc_does_not_collect_the_blobs_of_a_push_in_flight(
    s3_registry: Registry, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    # A push stores every blob before it commits the version row: in between,
    # its blobs are unreferenced, and younger than the grace period.
    staged = tmp_path / "w.onnx"
    staged.write_bytes(b"a push that has not committed yet")
    entry = s3_registry.artifacts.put_file(staged)
    assert s3_registry.gc(grace_seconds=3600).removed_blobs == 0
    assert s3_registry.artifacts.has(entry.sha256)
    assert s3_registry.gc(grace_seconds=0).removed_blobs == 1


def test_reusing_an_old_blob_restarts_its_grace_period(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    settings = s3_settings(tmp_path / "home", s3_endpoint, bucket)
    store = open_store(settings)
    entry = store.put_stream([b"stored long ago"])
    # S3 times have whole seconds: wait so that "now" is past the upload's second.
    time.sleep(1.1)
    uploaded_before = store.backend.clock() - 0.5
    assert store.stat(entry.sha256).modified <= uploaded_before  # type: ignore[union-attr]
    store.put_stream([b"stored long ago"])  # a new push finds it stored: dedupe
    grace = store.backend.clock() - uploaded_before
    assert store.gc(set(), grace_seconds=grace) == []  # the reuse protects it
    assert store.gc(set(), grace_seconds=0) == [entry.sha256]


def test_gc_aborts_unfinished_multipart_uploads(
    s3_registry: Registry, s3: S3Client, bucket: str
) -> None:
    # (moto reports a fixed Initiated date in 2010 for every upload, so the other half
    # of the rule, a young upload is kept, cannot be shown on it.)
    key = "blobs/sha256/ab/" + "ab" * 32
    s3.create_multipart_upload(Bucket=bucket, Key=key)
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    s3_registry.gc(grace_seconds=0)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_store_on_a_missing_bucket_fails_with_a_clear_error(home: Path, s3_endpoint: str) -> None:
    store = open_store(s3_settings(home, s3_endpoint, "no-such-bucket-here"))
    with pytest.raises(UnavailableError, match=r"s3://no-such-bucket-here/blobs/.*NoSuchBucket"):
        store.put_stream([b"x"])


def test_the_backend_is_chosen_by_the_artifact_url(home: Path, s3_endpoint: str) -> None:
    assert isinstance(open_store(s3_settings(home, s3_endpoint, "b")).backend, S3BlobBackend)
    local = open_store(Settings(home=home, artifact_url=f"file://{home / 'elsewhere'}"))
    assert isinstance(local, ArtifactStore) and local.location == str(home / "elsewhere")


def test_a_model_on_the_object_store_loads_and_serves(
    s3_store_settings: Settings, s3: S3Client, bucket: str, onnx_file: Path
) -> None:
    with TestClient(create_app(s3_store_settings)) as client:
        auth = {"Authorization": f"Bearer {s3_store_settings.admin_key_file.read_text().strip()}"}
        r = client.post(
            "/admin/v1/models/affine/versions",
            params={"filename": "affine.onnx"},
            content=onnx_file.read_bytes(),
            headers={**auth, "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        assert len(blob_keys(s3, bucket)) == 1
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 0, 0, 0]}]
        }
        r = client.post("/v2/models/affine/infer", json=body, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0]  # row 0 of W, plus 1


def test_the_cli_pushes_pulls_and_collects_on_the_object_store(
    home: Path, s3_endpoint: str, s3: S3Client, bucket: str, hf_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = s3_env(s3_endpoint, bucket)

    def maas(*args: str) -> Result:
        return runner.invoke(app, ["--home", str(home), *args], env=env)

    pushed = maas("models", "push", str(hf_dir), "--name", "m", "--task", "text-classification")
    assert pushed.exit_code == 0, pushed.stderr
    assert len(blob_keys(s3, bucket)) == len(tree(hf_dir))
    pulled = maas("models", "pull", "m", str(tmp_path / "out"))
    assert pulled.exit_code == 0, pulled.stderr
    assert tree(tmp_path / "out") == tree(hf_dir)
    assert maas("models", "delete", "m", "--force").exit_code == 0
    collected = maas("models", "gc", "--grace-seconds", "0")
    assert collected.exit_code == 0, collected.stderr
    assert f"removed {len(tree(hf_dir))} blob(s)" in collected.stdout
    assert blob_keys(s3, bucket) == []
