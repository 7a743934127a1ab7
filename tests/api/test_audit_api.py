"""Auditing the management API: what the middleware records, and the audit API."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

import maas.cli.audit as cli_audit
from maas.api.app import create_app
from maas.api.audit import AuditMiddleware, audit_log_of
from maas.api.audit import router as audit_router
from maas.cli.main import app as cli_app
from maas.client import MaasClient
from maas.config import Settings
from maas.security.audit import AuditLog

ONNX = {"Content-Type": "application/octet-stream"}
SECRET = "maas-sk-this-must-never-be-logged-0123456789"


def wire_audit(app: FastAPI) -> FastAPI:
    """Add the audit middleware and router unless ``create_app`` already does."""
    if not any(m.cls is AuditMiddleware for m in app.user_middleware):
        app.add_middleware(AuditMiddleware)
    if not any(getattr(r, "path", None) == "/admin/v1/audit" for r in app.routes):
        app.include_router(audit_router)
    return app


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(wire_audit(create_app(settings))) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(client: TestClient, name: str, scopes: list[str]) -> tuple[str, str]:
    """(plaintext, actor) of a fresh key with these scopes."""
    info, plaintext = client.app.state.keys.create(name, scopes)  # type: ignore[attr-defined]
    return plaintext, f"key:{info.name}#{info.id}"


def entries(client: TestClient, auth: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = client.get("/admin/v1/audit", params={"limit": 1000, **params}, headers=auth)
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()
    return result


def push_onnx(client: TestClient, headers: dict[str, str], onnx_file: Path) -> int:
    r = client.post(
        "/admin/v1/models/affine/versions",
        params={"filename": "affine.onnx"},
        content=onnx_file.read_bytes(),
        headers={**headers, **ONNX},
    )
    return r.status_code


def audit_log(client: TestClient) -> AuditLog:
    return audit_log_of(client.app)


def raw_rows(client: TestClient) -> str:
    """Every column of every audit row, as one string to search."""
    with audit_log(client)._db.engine.connect() as conn:
        return json.dumps(
            [list(map(str, row)) for row in conn.execute(text("SELECT * FROM audit_log"))]
        )


# ----------------------------------------------------------------- recording


def test_push_alias_load_and_delete_are_each_recorded_with_actor_and_result(
    client: TestClient, auth: dict[str, str], onnx_file: Path
) -> None:
    deploy, deployer = new_key(client, "ci", ["deploy"])
    assert push_onnx(client, bearer(deploy), onnx_file) == 201
    r = client.put(
        "/admin/v1/models/affine/aliases/production", json={"version": 1}, headers=bearer(deploy)
    )
    assert r.status_code == 200, r.text
    r = client.post("/admin/v1/models/affine/versions/1/load", headers=bearer(deploy))
    assert r.status_code == 200, r.text
    r = client.delete("/admin/v1/models/affine/aliases/production", headers=auth)
    assert r.status_code == 200, r.text
    r = client.delete("/admin/v1/models/affine/versions/1", headers=auth)
    assert r.status_code == 200, r.text

    admin = "key:bootstrap-admin#1"
    logged = entries(client, auth)
    assert [(e["actor"], e["action"], e["target"], e["result"]) for e in logged] == [
        (deployer, "version.push", "/admin/v1/models/affine/versions", "201"),
        (deployer, "alias.set", "/admin/v1/models/affine/aliases/production", "200"),
        (deployer, "version.load", "/admin/v1/models/affine/versions/1/load", "200"),
        (admin, "alias.delete", "/admin/v1/models/affine/aliases/production", "200"),
        (admin, "version.delete", "/admin/v1/models/affine/versions/1", "200"),
    ]
    push = logged[0]
    assert push["source"] == "testclient"
    assert push["details"] == {
        "method": "POST",
        "route": "/admin/v1/models/{name}/versions",
        "query": {"filename": "affine.onnx"},
    }
    assert audit_log(client).verify().ok


@pytest.mark.parametrize("credentials", [None, "Bearer maas-sk-wrong", "Basic abc"])
def test_a_refused_request_without_a_valid_key_is_recorded_as_anonymous_401(
    client: TestClient, auth: dict[str, str], credentials: str | None
) -> None:
    headers = {"Authorization": credentials} if credentials else {}
    r = client.delete("/admin/v1/models/anything", headers=headers)
    assert r.status_code == 401
    (entry,) = entries(client, auth)
    assert (entry["actor"], entry["action"], entry["result"]) == (
        "anonymous",
        "model.delete",
        "401",
    )
    assert entry["target"] == "/admin/v1/models/anything"


def test_a_request_refused_for_scope_is_recorded_with_the_key_and_403(
    client: TestClient, auth: dict[str, str]
) -> None:
    infer, who = new_key(client, "app", ["infer"])
    assert client.post("/admin/v1/gc", headers=bearer(infer)).status_code == 403
    (entry,) = entries(client, auth)
    assert (entry["actor"], entry["action"], entry["result"]) == (who, "registry.gc", "403")


def test_an_unknown_admin_route_is_recorded_under_its_path(
    client: TestClient, auth: dict[str, str]
) -> None:
    assert client.post("/admin/v1/no-such-thing").status_code == 404
    (entry,) = entries(client, auth)
    assert entry["action"] == "POST /admin/v1/no-such-thing" and entry["result"] == "404"


def test_an_upload_refused_before_routing_is_recorded_under_its_route(home: Path) -> None:
    settings = Settings(home=home, max_upload_bytes=16)
    with TestClient(wire_audit(create_app(settings))) as c:
        key = settings.admin_key_file.read_text().strip()
        r = c.post("/admin/v1/models/m/versions", content=b"x" * 64, headers=bearer(key))
        assert r.status_code == 413
        (entry,) = audit_log_of(c.app).list()
    assert (entry.action, entry.result) == ("version.push", "413")
    assert entry.details["route"] == "/admin/v1/models/{name}/versions"


def test_reads_and_inference_requests_are_not_recorded(
    client: TestClient, auth: dict[str, str]
) -> None:
    for path in ("/admin/v1/models", "/admin/v1/loaded", "/admin/v1/audit", "/admin/v1/keys"):
        assert client.get(path, headers=auth).status_code == 200
    client.head("/admin/v1/models", headers=auth)
    client.options("/admin/v1/models", headers=auth)
    client.get("/admin/v1/audit/verify", headers=auth)
    client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=auth)
    client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert entries(client, auth) == []


def test_request_bodies_and_secret_query_values_never_reach_the_log(
    client: TestClient, auth: dict[str, str], admin_key: str
) -> None:
    r = client.post("/admin/v1/keys", json={"name": "svc", "scopes": ["infer"]}, headers=auth)
    assert r.status_code == 201, r.text
    created_plaintext = r.json()["key"]
    r = client.post(
        "/admin/v1/models",
        json={"name": "m", "task": "tensor", "description": SECRET},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    client.post("/admin/v1/models/m/versions", content=SECRET.encode(), headers={**auth, **ONNX})
    r = client.post("/admin/v1/gc", params={"grace_seconds": 0, "token": SECRET}, headers=auth)
    assert r.status_code == 200, r.text

    logged = entries(client, auth)
    assert [e["action"] for e in logged] == [
        "key.create",
        "model.create",
        "version.push",
        "registry.gc",
    ]
    assert logged[-1]["details"]["query"] == {"grace_seconds": "0", "token": "[redacted]"}
    everything = raw_rows(client)
    for secret in (SECRET, created_plaintext, admin_key):
        assert secret not in everything


def test_an_unhandled_error_is_recorded_as_500(settings: Settings) -> None:
    app = wire_audit(create_app(settings))

    @app.post("/admin/v1/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/admin/v1/boom").status_code == 500
        (entry,) = audit_log_of(app).list()
    assert (entry.action, entry.result) == ("POST /admin/v1/boom", "500")


def test_a_failing_audit_write_never_breaks_the_response(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_app: Any) -> AuditLog:
        raise RuntimeError("audit store unavailable")

    app = create_app(settings)
    app.add_middleware(AuditMiddleware, audit_log_getter=broken)
    with caplog.at_level(logging.ERROR, logger="maas.audit"), TestClient(app) as c:
        key = settings.admin_key_file.read_text().strip()
        r = c.post("/admin/v1/models", json={"name": "m", "task": "tensor"}, headers=bearer(key))
    assert r.status_code == 201
    assert "failed to write the audit entry for POST /admin/v1/models" in caplog.text


# ------------------------------------------------------------------- reading


def test_audit_api_filters_and_pages_with_after_id(
    client: TestClient, auth: dict[str, str]
) -> None:
    deploy, deployer = new_key(client, "ci", ["deploy"])
    for name in ("a", "b", "c"):
        client.post("/admin/v1/models", json={"name": name, "task": "tensor"}, headers=auth)
        client.patch(f"/admin/v1/models/{name}", json={"description": "x"}, headers=bearer(deploy))
    assert [e["target"] for e in entries(client, auth, action="model.update")] == [
        "/admin/v1/models/a",
        "/admin/v1/models/b",
        "/admin/v1/models/c",
    ]
    assert {e["action"] for e in entries(client, auth, actor=deployer)} == {"model.update"}
    page1 = entries(client, auth, limit=4)
    page2 = entries(client, auth, limit=4, after_id=page1[-1]["id"])
    assert [e["id"] for e in page1 + page2] == [1, 2, 3, 4, 5, 6]
    since = page2[0]["ts"]
    assert [e["id"] for e in entries(client, auth, since=since)] == [5, 6]
    assert client.get("/admin/v1/audit", params={"limit": 0}, headers=auth).status_code == 400


def test_audit_api_verify_returns_the_head_hash_and_names_a_tampered_entry(
    client: TestClient, auth: dict[str, str]
) -> None:
    for name in ("a", "b", "c"):
        client.post("/admin/v1/models", json={"name": name, "task": "tensor"}, headers=auth)
    report = client.get("/admin/v1/audit/verify", headers=auth).json()
    last = entries(client, auth)[-1]
    assert report["ok"] is True and report["checked"] == 3
    assert (report["head_id"], report["head_hash"]) == (last["id"], last["hash"])

    with audit_log(client)._db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'key:nobody#0' WHERE id = 2"))
    report = client.get("/admin/v1/audit/verify", headers=auth).json()
    assert report["ok"] is False and report["first_bad_id"] == 2
    assert "entry 2" in report["reason"]


def test_reading_the_audit_log_needs_the_admin_scope(
    client: TestClient, auth: dict[str, str]
) -> None:
    deploy, _ = new_key(client, "ci", ["deploy"])
    assert client.get("/admin/v1/audit", headers=bearer(deploy)).status_code == 403
    assert client.get("/admin/v1/audit/verify", headers=bearer(deploy)).status_code == 403
    assert client.get("/admin/v1/audit", headers=bearer("maas-sk-wrong")).status_code == 401


def test_cli_reads_and_verifies_through_the_server_with_url(
    client: TestClient, auth: dict[str, str], admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/admin/v1/models", json={"name": "a", "task": "tensor"}, headers=auth)
    # The CLI's HTTP client, pointed at the in-process app instead of a socket.
    monkeypatch.setattr(
        cli_audit,
        "open_client",
        lambda s: MaasClient(
            s.url, http=TestClient(client.app, base_url=s.url, headers=bearer(s.api_key))
        ),
    )
    runner = CliRunner()
    base = ["--url", "http://testserver", "--api-key", admin_key, "audit"]
    result = runner.invoke(cli_app, [*base, "list", "--json"])
    assert result.exit_code == 0, result.stderr
    assert [e["action"] for e in json.loads(result.stdout)] == ["model.create"]
    result = runner.invoke(cli_app, [*base, "verify"])
    assert result.exit_code == 0 and "intact: 1 entries" in result.stdout
    result = runner.invoke(
        cli_app, ["--url", "http://testserver", "--api-key", "x", "audit", "verify"]
    )
    assert result.exit_code == 1 and "invalid API key" in result.stderr
