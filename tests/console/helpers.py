"""Signing a TestClient in to the console the way a browser does."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def sign_in(client: TestClient, key: str) -> str:
    """Sign in with ``key`` through the sign-in form; returns the session's CSRF token."""
    form = client.get("/console")
    login_token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert login_token is not None, form.text
    r = client.post("/console/session", data={"key": key, "csrf": login_token.group(1)})
    assert r.status_code == 200 and "/console/" in str(r.url), r.text
    return csrf_of(r.text)


def csrf_of(html: str) -> str:
    token = re.search(r'name="csrf-token" content="([^"]*)"', html)
    assert token is not None and token.group(1), html
    return token.group(1)
