"""The console over HTTP in process: sign-in, the session cookie, CSRF, CSP, and that
every action goes through the API with the signed-in key's own scopes."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from maas.console.sessions import LOGIN_COOKIE, SESSION_COOKIE
from tests.console.helpers import csrf_of, sign_in

XSS = "<img src=x onerror=alert(1)>"


def _key(client: TestClient, auth: dict[str, str], *scopes: str) -> tuple[int, str]:
    r = client.post(
        "/admin/v1/keys", json={"name": "-".join(scopes), "scopes": list(scopes)}, headers=auth
    )
    assert r.status_code == 201, r.text
    return r.json()["info"]["id"], r.json()["key"]


def test_pages_carry_a_strict_csp_and_refuse_framing(client: TestClient) -> None:
    r = client.get("/console")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"


def test_sign_in_sets_an_httponly_strict_session_cookie_that_is_not_the_key(
    client: TestClient, admin_key: str
) -> None:
    sign_in(client, admin_key)
    cookie = next(c for c in client.cookies.jar if c.name == SESSION_COOKIE)
    assert cookie.value != admin_key and admin_key not in cookie.value
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "strict"
    assert cookie.path == "/console"
    assert admin_key not in client.get("/console/keys").text


def test_a_wrong_key_does_not_sign_in(client: TestClient) -> None:
    form = client.get("/console").text
    token = form.split('name="csrf" value="')[1].split('"')[0]
    r = client.post("/console/session", data={"key": "maas-sk-wrong", "csrf": token})
    assert str(r.url).endswith("/console?error=invalid+API+key") or "error" in str(r.url)
    assert 'role="alert"' in r.text
    assert SESSION_COOKIE not in client.cookies


def test_the_sign_in_form_needs_its_own_token(client: TestClient, admin_key: str) -> None:
    client.get("/console")
    r = client.post("/console/session", data={"key": admin_key, "csrf": "forged"})
    assert "expired" in r.text
    assert SESSION_COOKIE not in client.cookies


def test_pages_and_the_proxy_need_a_session(client: TestClient) -> None:
    r = client.get("/console/models", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console"
    r = client.get("/console/api/admin/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_a_state_changing_call_without_the_csrf_token_is_refused(
    client: TestClient, admin_key: str, auth: dict[str, str]
) -> None:
    csrf = sign_in(client, admin_key)
    body = {"name": "m", "task": "tensor"}
    r = client.post("/console/api/admin/v1/models", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]["message"]
    r = client.post("/console/api/admin/v1/models", json=body, headers={"X-CSRF-Token": "x"})
    assert r.status_code == 403
    assert client.get("/admin/v1/models", headers=auth).json() == []
    r = client.post("/console/api/admin/v1/models", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text


def test_a_cross_site_request_is_refused_even_with_the_token(
    client: TestClient, admin_key: str
) -> None:
    csrf = sign_in(client, admin_key)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        r = client.post(
            "/console/api/admin/v1/models",
            json={"name": "m", "task": "tensor"},
            headers={"X-CSRF-Token": csrf, **headers},
        )
        assert r.status_code == 403, headers


def test_the_proxy_forwards_only_the_api(client: TestClient, admin_key: str) -> None:
    sign_in(client, admin_key)
    assert client.get("/console/api/console/models").status_code == 404
    assert client.get("/console/api/healthz").status_code == 404
    assert client.get("/console/api/metrics").status_code == 200


def test_a_read_key_sees_no_revoke_button_and_the_api_refuses_the_revoke(
    client: TestClient, auth: dict[str, str]
) -> None:
    victim, _ = _key(client, auth, "infer")
    _, read_key = _key(client, auth, "read")
    csrf = sign_in(client, read_key)
    page = client.get("/console/keys").text
    assert "Revoke" not in page and "admin" in page  # "needs admin" explains why
    r = client.delete(f"/console/api/admin/v1/keys/{victim}", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "permission_error"
    assert client.get(f"/admin/v1/keys/{victim}", headers=auth).json()["revoked_at"] is None


def test_nav_shows_only_what_the_key_may_open(client: TestClient, auth: dict[str, str]) -> None:
    _, infer_key = _key(client, auth, "infer")
    sign_in(client, infer_key)
    page = client.get("/console/playground").text
    assert 'href="/console/playground"' in page
    assert 'href="/console/keys"' not in page and 'href="/console/models"' not in page


def test_revoking_the_key_ends_its_console_session(
    client: TestClient, auth: dict[str, str]
) -> None:
    key_id, key = _key(client, auth, "read")
    sign_in(client, key)
    assert client.get("/console/models", follow_redirects=False).status_code == 200
    client.delete(f"/admin/v1/keys/{key_id}", headers=auth)
    r = client.get("/console/models", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console"
    assert client.get("/console/api/admin/v1/models").status_code == 401


def test_the_session_cookie_expires_no_later_than_the_key(
    client: TestClient, auth: dict[str, str]
) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=10)
    r = client.post(
        "/admin/v1/keys",
        json={"name": "short", "scopes": ["read"], "expires_at": expires.isoformat()},
        headers=auth,
    )
    sign_in(client, r.json()["key"])
    cookie = next(c for c in client.cookies.jar if c.name == SESSION_COOKIE)
    assert cookie.expires is not None and cookie.expires <= expires.timestamp() + 1


def test_a_model_description_is_rendered_as_text(
    client: TestClient, admin_key: str, auth: dict[str, str]
) -> None:
    r = client.post(
        "/admin/v1/models",
        json={"name": "xss", "task": "tensor", "description": XSS, "tags": {"t": XSS}},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    sign_in(client, admin_key)
    for path in ("/console/models", "/console/models/xss"):
        html = client.get(path).text
        assert XSS not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_actions_through_the_console_are_audited_under_the_key(
    client: TestClient, admin_key: str, auth: dict[str, str]
) -> None:
    csrf = sign_in(client, admin_key)
    r = client.post(
        "/console/api/admin/v1/keys",
        json={"name": "from-console", "scopes": ["infer"]},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code == 201
    entries = client.get("/admin/v1/audit", params={"action": "key.create"}, headers=auth).json()
    assert entries[-1]["actor"] == "key:bootstrap-admin#1"
    assert entries[-1]["target"] == "/admin/v1/keys"
    audit_page = client.get("/console/audit", params={"verify": "true"}).text
    assert "Chain intact" in audit_page and "key.create" in audit_page


def test_usage_exports_as_csv_with_a_cost_column(client: TestClient, admin_key: str) -> None:
    sign_in(client, admin_key)
    r = client.get("/console/usage.csv", params={"group_by": "model", "price_1k_tokens": "2"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    header = next(csv.reader(io.StringIO(r.text)))
    assert header[0] == "model" and header[-1] == "cost"


def test_sign_out_needs_the_csrf_token_and_ends_the_session(
    client: TestClient, admin_key: str
) -> None:
    csrf = sign_in(client, admin_key)
    assert client.post("/console/signout", data={"csrf": "x"}).status_code == 403
    r = client.post("/console/signout", data={"csrf": csrf})
    assert str(r.url).endswith("/console")
    assert client.get("/console/models", follow_redirects=False).status_code == 303
    assert csrf_of(client.get("/console").text.replace('content=""', 'content="-"'))


def test_rotating_a_key_through_the_console_returns_a_new_secret_once(
    client: TestClient, admin_key: str, auth: dict[str, str]
) -> None:
    key_id, old = _key(client, auth, "infer")
    csrf = sign_in(client, admin_key)
    r = client.post(f"/console/api/admin/v1/keys/{key_id}/rotate", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    new = r.json()["key"]
    assert new != old and new not in client.get("/console/keys").text
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_the_console_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/console")]


def test_sign_in_and_sign_out_are_audited_refused_attempts_too(
    client: TestClient, admin_key: str, auth: dict[str, str]
) -> None:
    form = client.get("/console").text
    token = form.split('name="csrf" value="')[1].split('"')[0]
    client.post("/console/session", data={"key": "maas-sk-wrong", "csrf": token})
    csrf = sign_in(client, admin_key)
    client.post("/console/signout", data={"csrf": csrf})
    entries = client.get("/admin/v1/audit", params={"action": "console.sign_in"}, headers=auth)
    assert [(e["actor"], e["result"]) for e in entries.json()] == [
        ("anonymous", "401"),
        ("key:bootstrap-admin#1", "ok"),
    ]
    out = client.get("/admin/v1/audit", params={"action": "console.sign_out"}, headers=auth)
    assert [e["actor"] for e in out.json()] == ["key:bootstrap-admin#1"]


def test_signing_in_again_ends_the_browsers_previous_session(
    client: TestClient, admin_key: str
) -> None:
    sign_in(client, admin_key)
    first = client.cookies[SESSION_COOKIE]
    # The sign-in form posted again while the first session's cookie is still sent.
    client.cookies.set(LOGIN_COOKIE, "t" * 43, path="/console")
    client.post("/console/session", data={"key": admin_key, "csrf": "t" * 43})
    assert client.cookies[SESSION_COOKIE] != first
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, first, path="/console")
    assert client.get("/console/models", follow_redirects=False).status_code == 303


def test_the_audit_page_opens_on_the_newest_entries(client: TestClient, admin_key: str) -> None:
    audit = client.app.state.audit
    for i in range(130):
        audit.append("key:test#9", "model.delete", f"/admin/v1/models/m{i}", result="404")
    sign_in(client, admin_key)  # entry 131: console.sign_in
    page = client.get("/console/audit").text
    ids = [int(i) for i in re.findall(r'<td class="num">(\d+)</td><td>', page)]
    assert ids == list(range(32, 132))
    older = re.search(r'href="/console/audit\?([^"]+)" id="audit-older"', page)
    assert older is not None and "after_id=0" in older[1]
    first_page = client.get(f"/console/audit?{older[1].replace('&amp;', '&')}").text
    assert re.findall(r'<td class="num">(\d+)</td><td>', first_page)[0] == "1"
