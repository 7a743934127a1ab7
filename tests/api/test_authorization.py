"""Route x scope: every route has a decision, and every key gets exactly what the table says."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from maas.api.app import create_app
from maas.api.permissions import PUBLIC, ROUTE_SCOPES
from maas.config import Settings
from maas.registry.store import Registry
from maas.security.scopes import effective_scopes
from tests.helpers import make_onnx_file

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}


def _served(settings: Settings) -> list[tuple[str, str]]:
    paths = create_app(settings).openapi()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


def _concrete(path: str) -> str:
    return re.sub(
        r"\{[^}]+\}", lambda m: "1" if m.group(0) in ("{version}", "{key_id}") else "x", path
    )


def test_every_served_route_has_an_authorization_decision(settings: Settings) -> None:
    undecided = [r for r in _served(settings) if r not in ROUTE_SCOPES and r not in PUBLIC]
    assert undecided == [], "add these routes to maas.api.permissions.ROUTE_SCOPES"


def test_the_security_docs_print_the_route_table() -> None:
    text = DOCS.read_text()
    for (method, path), scopes in ROUTE_SCOPES.items():
        row = f"| `{method}` | `{path}` | {' or '.join(sorted(scopes))} |"
        assert row in text, f"docs/security.md lacks: {row}"


@pytest.fixture
def scoped(client: TestClient, auth: dict[str, str]) -> dict[str, dict[str, str]]:
    """One key per scope."""
    headers = {}
    for scope in ("admin", "deploy", "read", "infer"):
        r = client.post(
            "/admin/v1/keys", json={"name": f"k-{scope}", "scopes": [scope]}, headers=auth
        )
        assert r.status_code == 201, r.text
        headers[scope] = {"Authorization": f"Bearer {r.json()['key']}"}
    return headers


@pytest.mark.slow
def test_route_scope_matrix(
    client: TestClient, settings: Settings, scoped: dict[str, dict[str, str]]
) -> None:
    checked = 0
    for method, path in _served(settings):
        if (method, path) in PUBLIC:
            continue
        required = ROUTE_SCOPES[(method, path)]
        for scope, headers in scoped.items():
            r = client.request(method, _concrete(path), headers=headers)
            allowed = bool(effective_scopes([scope]) & required)
            if allowed:
                assert r.status_code not in (401, 403), (scope, method, path, r.text)
            else:
                assert r.status_code == 403, (scope, method, path, r.text)
                assert (
                    r.json()["error"]
                    if path.startswith("/v2")
                    else r.json()["error"]["type"] == "permission_error"
                )
            checked += 1
    assert checked >= 4 * 40


@pytest.fixture
def two_models(registry: Registry, tmp_path: Path) -> None:
    for name in ("team-a-affine", "team-b-affine"):
        registry.push(make_onnx_file(tmp_path / name / "m.onnx").parent, name, task="tensor")


def test_allowlist_hides_models_from_listings_and_forbids_their_use(
    client: TestClient, auth: dict[str, str], two_models: None
) -> None:
    r = client.post(
        "/admin/v1/keys",
        json={"name": "team-a", "scopes": ["infer", "read"], "models": ["team-a-*"]},
        headers=auth,
    )
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    ids = [m["id"] for m in client.get("/v1/models", headers=key).json()["data"]]
    assert ids == ["team-a-affine"]
    names = [m["name"] for m in client.get("/admin/v1/models", headers=key).json()]
    assert names == ["team-a-affine"]
    assert client.get("/v1/models/team-b-affine", headers=key).status_code == 404
    assert client.get("/v1/models/team-a-affine", headers=key).status_code == 200
    assert client.post("/v2/models/team-a-affine/infer", json=X, headers=key).status_code == 200
    r = client.post("/v2/models/team-b-affine/infer", json=X, headers=key)
    assert r.status_code == 403
    assert "team-b-affine" in r.json()["error"]
    r = client.post("/v1/embeddings", json={"model": "team-b-affine", "input": "x"}, headers=key)
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "permission_error"
    assert client.get("/admin/v1/models/team-b-affine", headers=key).status_code == 403


def test_expired_revoked_and_rotated_keys(client: TestClient, auth: dict[str, str]) -> None:
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    r = client.post("/admin/v1/keys", json={"name": "short", "expires_at": soon}, headers=auth)
    assert r.status_code == 201, r.text
    short = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.get("/v1/models", headers=short).status_code == 200
    time.sleep(2.2)
    r = client.get("/v1/models", headers=short)
    assert r.status_code == 401
    assert "expired" in r.json()["error"]["message"]

    r = client.post("/admin/v1/keys", json={"name": "r", "scopes": ["read"]}, headers=auth)
    key_id, old = r.json()["info"]["id"], {"Authorization": f"Bearer {r.json()['key']}"}
    r = client.post(f"/admin/v1/keys/{key_id}/rotate", headers=auth)
    new = {"Authorization": f"Bearer {r.json()['key']}"}
    assert r.json()["info"]["rotated_from"] == key_id
    assert r.json()["info"]["scopes"] == ["read"]
    assert client.get("/admin/v1/models", headers=old).status_code == 401
    assert client.get("/admin/v1/models", headers=new).status_code == 200
    new_id = r.json()["info"]["id"]
    assert client.delete(f"/admin/v1/keys/{new_id}", headers=auth).status_code == 200
    r = client.get("/admin/v1/models", headers=new)
    assert r.status_code == 401
    assert "revoked" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "pii_policy": "shred"}, "pii_policy"),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "rpm_limit": 0}, "rpm_limit"),
        ({"name": "x", "unknown": 1}, "unknown"),
        ({"scopes": ["read"]}, "name"),
    ],
)
def test_bad_key_requests_are_400s_naming_the_field(
    client: TestClient, auth: dict[str, str], body: dict[str, object], param: str
) -> None:
    r = client.post("/admin/v1/keys", json=body, headers=auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_key_plaintext_never_reaches_the_logs_or_the_listing(
    client: TestClient, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = client.post("/admin/v1/keys", json={"name": "secret-holder"}, headers=auth)
    secret = r.json()["key"]
    client.get("/admin/v1/models", headers={"Authorization": f"Bearer {secret}"})  # 403: infer only
    client.get("/v1/models", headers={"Authorization": f"Bearer {secret}x"})  # 401
    listing = client.get("/admin/v1/keys", headers=auth).text
    admin_secret = auth["Authorization"].split()[1]
    for text in (caplog.text, listing):
        assert secret not in text
        assert admin_secret not in text
        assert secret[len("maas-sk-") :] not in text


def test_security_headers_and_no_cors_by_default(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/v1/models", headers={**auth, "Origin": "https://evil.example"})
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "access-control-allow-origin" not in r.headers


def test_cors_when_configured(home: Path) -> None:
    settings = Settings(home=home, cors_origins=["https://console.example"])
    with TestClient(create_app(settings)) as client:
        r = client.options(
            "/v1/models",
            headers={
                "Origin": "https://console.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert r.headers["access-control-allow-origin"] == "https://console.example"
        r = client.options(
            "/v1/models",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in r.headers
