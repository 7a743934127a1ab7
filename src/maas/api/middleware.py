"""The HTTP edge of the trust layer, as one pure ASGI middleware.

For every request: a body size limit (413 before the handler reads past it),
a time limit to the first response byte (504), security headers, and the
``x-ratelimit-*`` headers admission computed. Once the response of a metered
(inference) request is sent, it settles it with admission: a usage record built
from the request's ``RequestContext`` (queued, written in batches elsewhere) and
the tokens used against the key's TPM window. Which requests are metered is
admission's decision, taken from the route table, not a path pattern here.

Pure ASGI rather than ``BaseHTTPMiddleware``: it streams bodies through
untouched and runs the app in the same task.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maas.api.errors import error_payload
from maas.config import Settings
from maas.errors import PayloadTooLargeError
from maas.registry.refs import model_name
from maas.security.admission import Admitted
from maas.security.usage import UsageEvent
from maas.serving.context import RequestContext

log = logging.getLogger(__name__)

_V2_MODEL = re.compile(r"^/v2/models/([^/]+)")
_UPLOAD = re.compile(r"^/admin/v1/models/[^/]+/versions/?$|^/admin/v1/datasets/?$")
# Self-contained HTML job reports carry their own <style>; nothing else may run.
_REPORT = re.compile(r"^/admin/v1/jobs/[^/]+/report$")
_REPORT_CSP = (
    b"content-security-policy",
    b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
)

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# The JSON API never serves active content; the interactive docs load their own
# scripts and styles, so they get no CSP from here.
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DOCS = ("/docs", "/redoc")


class TrustMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        upload = method == "POST" and _UPLOAD.match(path) is not None
        limit = self.settings.max_upload_bytes if upload else self.settings.max_request_bytes
        setting = "MAAS_MAX_UPLOAD_BYTES" if upload else "MAAS_MAX_REQUEST_BYTES"

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            message = f"request body of {declared} bytes exceeds {limit} bytes ({setting})"
            await _send_error(send, path, 413, message)
            return

        received = 0
        scope.setdefault("state", {})  # admission writes its decision here

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body exceeds {limit} bytes ({setting})")
            return message

        status = 500
        sent = 0
        started = False
        cancel = anyio.CancelScope()
        timeout = self.settings.request_timeout_seconds
        if timeout and not upload and not path.endswith("/download"):
            cancel.deadline = anyio.current_time() + timeout

        async def guarded_send(message: Message) -> None:
            nonlocal status, sent, started
            if message["type"] == "http.response.start":
                started = True
                cancel.deadline = math.inf  # the limit is to the first byte; streams go on
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if _REPORT.match(path):
                    headers.append(_REPORT_CSP)
                elif not path.startswith(_DOCS):
                    headers.append(_API_CSP)
                admitted: Admitted | None = scope["state"].get("admitted")
                if admitted is not None:
                    headers += [(k.encode(), v.encode()) for k, v in admitted.rate_headers.items()]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        with cancel:
            await self.app(scope, counting_receive, guarded_send)
        if cancel.cancelled_caught and not started:
            status = 504
            message = f"no response within {timeout:g} s (MAAS_REQUEST_TIMEOUT_SECONDS)"
            await _send_error(send, path, 504, message, code="timeout")
        admitted: Admitted | None = scope["state"].get("admitted")
        if admitted is not None and admitted.metered:
            await self._settle(scope, admitted, status, received, sent)

    async def _settle(
        self, scope: Scope, admitted: Admitted, status: int, received: int, sent: int
    ) -> None:
        key = admitted.key
        if key is None:
            return
        # No context: refused after admission but before the route ran (a malformed body).
        ctx: RequestContext = scope["state"].get("ctx") or RequestContext(admitted)
        model = ctx.model
        if not model and (match := _V2_MODEL.match(scope["path"])):
            model = model_name(match.group(1))  # refused before the data plane
        try:
            await scope["app"].state.admission.settle(
                admitted,
                UsageEvent(
                    key_id=key.id,
                    model=model,
                    version=int(ctx.version) if ctx.version.isdigit() else None,
                    route=ctx.route or scope["path"].rsplit("/", 1)[-1],
                    status=status,
                    prompt_tokens=ctx.prompt_tokens,
                    completion_tokens=ctx.completion_tokens,
                    items=ctx.items,
                    compute_seconds=ctx.cost.compute_seconds,
                    queue_seconds=ctx.cost.queue_seconds,
                    bytes_in=received,
                    bytes_out=sent,
                    audio_seconds=ctx.audio_seconds,
                    images=ctx.images,
                ),
            )
        except Exception:
            log.exception("usage metering failed for %s", scope["path"])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(
    send: Send, path: str, status: int, message: str, code: str = "payload_too_large"
) -> None:
    body = json.dumps(error_payload(path, status, message, code=code)).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
