"""The management API over a real app (in-process ASGI via TestClient)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from maas.api.app import create_app
from maas.config import Settings
from maas.registry.artifacts import FileEntry, Manifest
from tests.helpers import (
    blob_count,
    leftover_temp_files,
    tar_bytes,
    tar_of_dir,
    tar_with_symlink,
    zip_bytes,
)

TAR = {"Content-Type": "application/x-tar"}


def expected_digest(root: Path) -> str:
    """Compute a directory's version digest independently of the store."""
    entries = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            entries.append(
                FileEntry(
                    path.relative_to(root).as_posix(), len(data), hashlib.sha256(data).hexdigest()
                )
            )
    return Manifest.of(entries).digest


def upload(client: TestClient, auth: dict[str, str], name: str, body: bytes, **params: str) -> dict:  # type: ignore[type-arg]
    r = client.post(
        f"/admin/v1/models/{name}/versions", params=params, content=body, headers={**auth, **TAR}
    )
    return {"status": r.status_code, "json": r.json()}


def test_upload_and_download_of_hf_dir_round_trip_with_identical_digest(
    client: TestClient, auth: dict[str, str], hf_dir: Path, tmp_path: Path
) -> None:
    r = upload(
        client,
        auth,
        "sentiment",
        tar_of_dir(hf_dir),
        task="text-classification",
        description="v1",
        params='{"lr": 0.1}',
    )
    assert r["status"] == 201, r
    info = r["json"]
    assert info["model"] == "sentiment" and info["version"] == 1
    assert info["digest"] == expected_digest(hf_dir)
    assert info["params"] == {"lr": 0.1}
    assert info["created_by"].startswith("key:bootstrap-admin")

    d = client.get("/admin/v1/models/sentiment/versions/1/download", headers=auth)
    assert d.status_code == 200
    assert d.headers["x-maas-digest"] == info["digest"]
    out = tmp_path / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(d.content)) as tar:
        tar.extractall(out, filter="data")
    assert expected_digest(out) == info["digest"]


def test_onnx_file_upload_records_signature(
    client: TestClient, auth: dict[str, str], onnx_file: Path
) -> None:
    r = client.post(
        "/admin/v1/models/affine/versions",
        params={"filename": "affine.onnx"},
        content=onnx_file.read_bytes(),
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["format"] == "onnx" and info["task"] == "tensor"
    assert info["metadata"]["inputs"][0]["name"] == "x"
    assert info["digest"] == expected_digest(onnx_file.parent)


@pytest.mark.slow
def test_real_minilm_round_trips_through_the_api(
    client: TestClient, auth: dict[str, str], minilm_dir: Path
) -> None:
    r = upload(client, auth, "minilm", tar_of_dir(minilm_dir), task="embeddings")
    assert r["status"] == 201
    assert r["json"]["digest"] == expected_digest(minilm_dir)
    assert r["json"]["metadata"]["parameter_count"] == 22_713_728


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (tar_bytes({"config.json": b"{}", "../escape.safetensors": b"x"}), "path traversal"),
        (tar_bytes({"/abs/model.safetensors": b"x"}), "absolute path"),
        (tar_with_symlink("/etc/passwd"), "links are not allowed"),
        (zip_bytes({"config.json": b"{}", "pytorch_model.bin": b"\x80"}), "pickle"),
        (b"not an archive at all", "not a tar or zip"),
    ],
    ids=["traversal", "absolute", "symlink", "pickle", "garbage"],
)
def test_unsafe_or_invalid_uploads_are_refused_and_write_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, body: bytes, message: str
) -> None:
    r = upload(client, auth, "evil", body, task="text-classification")
    assert r["status"] == 400
    assert message in r["json"]["error"]["message"]
    assert blob_count(settings.home) == 0
    assert leftover_temp_files(settings.home) == []
    assert client.get("/admin/v1/models/evil", headers=auth).status_code == 404


@pytest.fixture
def small_client(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(home=tmp_path / "small", max_upload_bytes=1000)
    with TestClient(create_app(settings)) as c:
        yield c, settings


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_upload_gets_413_and_leaves_no_temp_files(
    small_client: tuple[TestClient, Settings], chunked: bool
) -> None:
    client, settings = small_client
    key = settings.admin_key_file.read_text().strip()
    payload = tar_bytes({"config.json": b"{}", "model.safetensors": b"\0" * 5000})
    body = iter([payload[i : i + 512] for i in range(0, len(payload), 512)]) if chunked else payload
    r = client.post(
        "/admin/v1/models/big/versions",
        content=body,
        headers={"Authorization": f"Bearer {key}", **TAR},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert leftover_temp_files(settings.home) == []
    assert blob_count(settings.home) == 0


def test_empty_upload_is_a_clear_400(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/admin/v1/models/x/versions", content=b"", headers={**auth, **TAR})
    assert r.status_code == 400
    assert "empty request body" in r.json()["error"]["message"]


def test_alias_flow_history_and_rollback_over_http(
    client: TestClient, auth: dict[str, str], hf_dir: Path
) -> None:
    for _ in range(2):
        assert (
            upload(client, auth, "m", tar_of_dir(hf_dir), task="text-classification")["status"]
            == 201
        )
    for v in (1, 2):
        r = client.put("/admin/v1/models/m/aliases/production", json={"version": v}, headers=auth)
        assert r.status_code == 200 and r.json()["version"] == v
    assert client.get("/admin/v1/resolve", params={"ref": "m"}, headers=auth).json()["version"] == 2
    r = client.post("/admin/v1/models/m/aliases/production/rollback", headers=auth)
    assert r.json()["version"] == 1
    history = client.get("/admin/v1/models/m/aliases/production/history", headers=auth).json()
    assert [(e["from_version"], e["to_version"]) for e in history] == [(None, 1), (1, 2), (2, 1)]
    assert history[-1]["actor"].startswith("key:bootstrap-admin")
    assert client.get("/admin/v1/models/m/versions/production", headers=auth).json()["version"] == 1
    r = client.delete("/admin/v1/models/m/versions/1", headers=auth)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"
    assert (
        client.post("/admin/v1/models/m/versions/2/archive", headers=auth).json()["status"]
        == "archived"
    )
    assert client.delete("/admin/v1/models/m/versions/2", headers=auth).json() == {"deleted": "m:2"}
    assert client.post("/admin/v1/gc", params={"grace_seconds": 0}, headers=auth).status_code == 200


def test_model_crud(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post(
        "/admin/v1/models",
        json={"name": "clf", "task": "text-classification", "tags": {"team": "a"}},
        headers=auth,
    )
    assert r.status_code == 201
    assert (
        client.post(
            "/admin/v1/models", json={"name": "clf", "task": "tensor"}, headers=auth
        ).status_code
        == 409
    )
    r = client.patch("/admin/v1/models/clf", json={"description": "hi"}, headers=auth)
    assert r.json()["description"] == "hi"
    assert [m["name"] for m in client.get("/admin/v1/models", headers=auth).json()] == ["clf"]
    assert client.delete("/admin/v1/models/clf", headers=auth).status_code == 200


def test_unknown_body_fields_and_bad_types_are_400_in_openai_shape(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.post(
        "/admin/v1/models", json={"name": "a", "task": "tensor", "colour": "red"}, headers=auth
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == "colour"
    r = client.post(
        "/admin/v1/models",
        content=b"{not json",
        headers={**auth, "Content-Type": "application/json"},
    )
    assert r.status_code == 400


def test_unknown_route_and_method_use_the_error_shape(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.get("/admin/v1/nothing-here", headers=auth)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = client.get("/v2/nothing", headers=auth)
    assert r.status_code == 404
    assert isinstance(r.json()["error"], str)
    r = client.put("/healthz")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_unexpected_exception_is_a_500_without_traceback(settings: Settings) -> None:
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert "secret" not in r.text
    assert "Traceback" not in r.text
    assert r.json()["error"]["code"] == "internal_error"


def test_health_and_readiness_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "store": "ok"}


def test_openapi_docs_list_the_admin_routes(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/admin/v1/models/{name}/versions" in paths
