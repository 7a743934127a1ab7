"""Every route except health requires a valid key; walk the app so new routes are covered."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from maas.api.app import create_app
from maas.config import Settings
from maas.registry.store import Registry
from maas.security.keys import KeyStore

PUBLIC = {
    "/healthz",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/docs/oauth2-redirect",
}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "1" if "version" in m.group(0) else "x", path)


def _routes(settings: Settings) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, read from its OpenAPI schema.

    FastAPI's router internals change between releases; the schema is the
    stable public description of every route.
    """
    paths = create_app(settings).openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        if path not in PUBLIC
        for method in operations
    ]


def test_the_route_walk_finds_the_admin_api(settings: Settings) -> None:
    routes = _routes(settings)
    assert sum(1 for _, p in routes if p.startswith("/admin/v1")) >= 18


@pytest.mark.parametrize("credentials", [None, "Bearer maas-sk-wrong", "Bearer ", "Basic abc"])
def test_every_non_public_route_answers_401_without_a_valid_key(
    client: TestClient, settings: Settings, credentials: str | None
) -> None:
    headers = {"Authorization": credentials} if credentials else {}
    for method, path in _routes(settings):
        r = client.request(method, _concrete(path), headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        if path.startswith("/v2"):  # the Open Inference Protocol's error shape
            assert isinstance(r.json()["error"], str)
        else:
            assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"


def test_bootstrap_key_file_is_private_and_works(client: TestClient, settings: Settings) -> None:
    key_file = settings.admin_key_file
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert key.startswith("maas-sk-")
    r = client.get("/admin/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200


def test_only_the_hash_of_a_key_is_stored(client: TestClient, settings: Settings) -> None:
    key = settings.admin_key_file.read_text().strip()
    db_bytes = b"".join(p.read_bytes() for p in settings.home.glob("maas.db*"))
    assert key.encode() not in db_bytes


def test_restart_does_not_create_a_second_admin_key(settings: Settings, tmp_path: Path) -> None:
    with TestClient(create_app(settings)):
        first = settings.admin_key_file.read_text()
    with TestClient(create_app(settings)):
        assert settings.admin_key_file.read_text() == first
    reg = Registry(settings)
    try:
        assert len(KeyStore(reg.db).list()) == 1
    finally:
        reg.close()


def test_key_revoked_through_the_api_is_refused_on_the_very_next_request(
    client: TestClient, auth: dict[str, str]
) -> None:
    created = client.post("/admin/v1/keys", headers=auth, json={"name": "ci", "scopes": ["read"]})
    key_id, key = created.json()["info"]["id"], created.json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/admin/v1/models", headers=headers).status_code == 200  # now cached
    assert client.delete(f"/admin/v1/keys/{key_id}", headers=auth).status_code == 200
    r = client.get("/admin/v1/models", headers=headers)
    assert r.status_code == 401
    assert "revoked" in r.json()["error"]["message"]


def test_key_revoked_by_another_process_is_refused_within_a_second(
    client: TestClient, settings: Settings
) -> None:
    reg = Registry(settings)  # another process's view of the same database
    try:
        store = KeyStore(reg.db)
        info, key = store.create("ci", ["admin"])
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/admin/v1/models", headers=headers).status_code == 200  # now cached
        store.revoke(info.id)
    finally:
        reg.close()
    revoked = time.monotonic()
    statuses = []
    while time.monotonic() - revoked < 1.0:
        statuses.append(client.get("/admin/v1/models", headers=headers).status_code)
        if statuses[-1] == 401:
            break
        time.sleep(0.02)
    assert statuses[-1] == 401, statuses
