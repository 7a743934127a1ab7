"""The web console's edge: ``/console/api/<route>`` forwarded as ``/<route>``, and headers.

``ConsoleProxy`` is the app's outermost middleware. For ``/console/api/<route>``
it checks the session cookie (``maas.console.sessions``) and, for anything but
GET/HEAD/OPTIONS, the session's CSRF token and that the browser names no other
site; then it hands the request to the app as ``/<route>`` with the session's
key as its bearer credential and no cookie. From there the request is like any
other client's: admission, scopes, allowlists, limits, metering and the audit
log see ``/<route>`` and the key. Bodies and streams pass through untouched.
A 401 from the API (the key revoked or expired) deletes the session.

Every other ``/console`` response gets the console's own Content-Security-Policy
(no inline script or style) in place of the API's, and ``no-store``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maas.api.errors import error_payload
from maas.config import Settings
from maas.console import sessions as sess

PREFIX = "/console"
API_PREFIX = PREFIX + "/api"
# What the proxy forwards to: the public API, nothing else (not the console itself).
FORWARDED = ("/admin/v1/", "/v1/", "/v2/", "/v2", "/metrics")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS = frozenset({b"content-security-policy", b"cache-control", b"referrer-policy"})
_STRIPPED = frozenset({b"cookie", b"authorization", sess.CSRF_HEADER.encode()})


def session_store(app: Any) -> sess.SessionStore:
    """The app's console sessions, created on first use under ``MAAS_HOME/console``."""
    store: sess.SessionStore | None = getattr(app.state, "console_sessions", None)
    if store is None:
        settings: Settings = app.state.settings
        store = sess.SessionStore(settings.home / "console" / "sessions")
        app.state.console_sessions = store
    return store


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            text: str = value.decode("latin-1")
            for part in text.split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return v
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def same_origin(scope: Scope) -> bool:
    """False when the browser says the request comes from another site.

    Browsers send ``Origin`` on every POST/PUT/PATCH/DELETE and ``Sec-Fetch-Site``
    on every request; either naming another origin is refused. Neither present
    (a non-browser client) leaves the decision to the CSRF token alone.
    """
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    host = _header(scope, b"host") or ""
    return origin.split("://", 1)[-1] == host


async def _send_json_error(send: Send, path: str, status: int, message: str) -> None:
    body = json.dumps(error_payload(path, status, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ConsoleProxy:
    """Pure ASGI middleware, outermost: ``/console/api/<route>`` -> ``/<route>`` with
    the session's key; every other ``/console`` response gets the console's CSP."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        # Every request of the app passes here: one prefix test for all that are not ours.
        end = len(PREFIX)
        if (
            not path.startswith(PREFIX)
            or scope["type"] != "http"
            or path[end : end + 1] not in ("", "/")
        ):
            await self.app(scope, receive, send)
            return
        if path.startswith(API_PREFIX + "/"):
            await self._forward(scope, receive, send)
            return

        async def page_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k not in _PAGE_HEADERS]
                headers.append((b"content-security-policy", CSP.encode()))
                # The API's "no-referrer" would make the browser send "Origin: null" on
                # the console's own POSTs, which the origin check must refuse.
                headers.append((b"referrer-policy", b"same-origin"))
                if not path.startswith(PREFIX + "/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, page_headers)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        target = path[len(API_PREFIX) :]
        if not target.startswith(FORWARDED):
            await _send_json_error(send, path, 404, f"the console forwards no route {target}")
            return
        store = session_store(scope["app"])
        session_id = _cookie(scope, sess.SESSION_COOKIE)
        session = await anyio.to_thread.run_sync(store.get, session_id)
        if session is None:
            await _send_json_error(send, path, 401, "not signed in to the console: see /console")
            return
        if scope["method"] not in SAFE_METHODS:
            if not same_origin(scope):
                await _send_json_error(send, path, 403, "cross-site request refused")
                return
            if not sess.tokens_match(session.csrf, _header(scope, sess.CSRF_HEADER.encode())):
                await _send_json_error(send, path, 403, "missing or wrong CSRF token")
                return
        headers = [(k, v) for k, v in scope.get("headers", []) if k not in _STRIPPED]
        headers.append((b"authorization", b"Bearer " + session.key.encode()))
        inner: Scope = {
            **scope,
            "path": target,
            "raw_path": target.encode(),
            "headers": headers,
            "state": {},
        }

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                # The key no longer works (revoked, expired): the session ends with it.
                await anyio.to_thread.run_sync(store.delete, session_id)
            await send(message)

        await self.app(inner, receive, watch)
