"""Audit of the management API: a middleware that records, a router that reads.

``AuditMiddleware`` records every state-changing request under ``/admin/v1``
(anything but GET, HEAD and OPTIONS), including refused ones: who, what,
where from and the HTTP status. It never reads request bodies (uploads, key
material) and never changes or delays the response: the entry is written after
the response has been sent, in a worker thread, and a failed write is logged,
not raised.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maas.api.deps import actor as actor_of
from maas.api.deps import require_key
from maas.security.audit import MAX_LIST_LIMIT, AuditEntry, AuditLog, VerifyReport
from maas.security.keys import KeyInfo

log = logging.getLogger("maas.audit")

ADMIN_PREFIX = "/admin/v1"
READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANONYMOUS = "anonymous"
# Query parameters whose values are never written to the log.
_SECRET_HINTS = ("secret", "token", "password", "passwd", "api_key", "apikey", "credential")

# (method, route template) -> action name; other routes fall back to "METHOD template".
ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/admin/v1/models"): "model.create",
    ("PATCH", "/admin/v1/models/{name}"): "model.update",
    ("DELETE", "/admin/v1/models/{name}"): "model.delete",
    ("POST", "/admin/v1/models/{name}/versions"): "version.push",
    ("PATCH", "/admin/v1/models/{name}/versions/{version}"): "version.update",
    ("DELETE", "/admin/v1/models/{name}/versions/{version}"): "version.delete",
    ("POST", "/admin/v1/models/{name}/versions/{version}/archive"): "version.archive",
    ("POST", "/admin/v1/models/{name}/versions/{version}/restore"): "version.restore",
    ("POST", "/admin/v1/models/{name}/versions/{version}/load"): "version.load",
    ("POST", "/admin/v1/models/{name}/versions/{version}/unload"): "version.unload",
    ("PUT", "/admin/v1/models/{name}/versions/{version}/deployment"): "version.deploy",
    ("PUT", "/admin/v1/models/{name}/routing"): "routing.set",
    ("DELETE", "/admin/v1/models/{name}/routing"): "routing.clear",
    ("POST", "/admin/v1/models/{name}/rollouts"): "rollout.start",
    ("POST", "/admin/v1/models/{name}/rollouts/{rollout_id}/cancel"): "rollout.cancel",
    ("POST", "/admin/v1/schedules"): "schedule.create",
    ("PATCH", "/admin/v1/schedules/{schedule}"): "schedule.update",
    ("DELETE", "/admin/v1/schedules/{schedule}"): "schedule.delete",
    ("POST", "/admin/v1/schedules/{schedule}/run"): "schedule.run",
    ("PUT", "/admin/v1/models/{name}/aliases/{alias}"): "alias.set",
    ("DELETE", "/admin/v1/models/{name}/aliases/{alias}"): "alias.delete",
    ("POST", "/admin/v1/models/{name}/aliases/{alias}/rollback"): "alias.rollback",
    ("POST", "/admin/v1/gc"): "registry.gc",
    ("POST", "/admin/v1/keys"): "key.create",
    ("PATCH", "/admin/v1/keys/{key_id}"): "key.update",
    ("DELETE", "/admin/v1/keys/{key_id}"): "key.revoke",
    ("POST", "/admin/v1/keys/{key_id}/rotate"): "key.rotate",
    ("POST", "/admin/v1/jobs"): "job.create",
    ("DELETE", "/admin/v1/jobs/{job_id}"): "job.cancel",
    ("POST", "/admin/v1/datasets"): "dataset.create",
    ("POST", "/admin/v1/models/{name}/versions/{version}/promote"): "version.promote",
    ("POST", "/admin/v1/models/{name}/feedback/export"): "feedback.export",
}


def audit_log_of(app: Any) -> AuditLog:
    """The app's AuditLog: ``app.state.audit`` if set, else one over the registry's database."""
    state = app.state
    audit: AuditLog | None = getattr(state, "audit", None)
    if audit is None:
        audit = AuditLog(state.registry.db)
        state.audit = audit
    return audit


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "/?")


_PATTERNS = [(method, _template_pattern(t), t) for method, t in ACTIONS]


def route_template(scope: Scope) -> str:
    """The matched route's template; for requests refused before routing (a body
    over the size limit), the known template the path fits; else the path itself."""
    template = getattr(scope.get("route"), "path", None)
    if isinstance(template, str):
        return template
    method, path = scope["method"], scope["path"]
    for candidate_method, pattern, candidate in _PATTERNS:
        if candidate_method == method and pattern.fullmatch(path):
            return candidate
    return str(path)


def action_name(method: str, template: str) -> str:
    return ACTIONS.get((method, template), f"{method} {template}")


def is_audited(method: str, path: str) -> bool:
    if method in READ_ONLY_METHODS:
        return False
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def _query_details(query_string: bytes) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        secret = any(hint in name.lower() for hint in _SECRET_HINTS)
        shown = "[redacted]" if secret else value
        previous = query.get(name)
        if previous is None:
            query[name] = shown
        elif isinstance(previous, list):
            previous.append(shown)
        else:
            query[name] = [previous, shown]
    return query


class AuditMiddleware:
    """Pure ASGI middleware; add it with ``app.add_middleware(AuditMiddleware)``.

    The log comes from ``audit_log_getter(app)`` (default :func:`audit_log_of`,
    which reads ``app.state``), looked up per request so the lifespan can set it.
    """

    def __init__(
        self, app: ASGIApp, audit_log_getter: Callable[[Any], AuditLog] = audit_log_of
    ) -> None:
        self.app = app
        self.audit_log_getter = audit_log_getter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return

        # Make sure the request-state dict exists now, so ``request.state.key``
        # set by ``require_key`` lands in the dict this scope still holds.
        scope.setdefault("state", {})
        status: int | None = None

        async def send_and_capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_capture)
        except BaseException:
            # ServerErrorMiddleware (outside us) turns an exception into a 500.
            await self._record(scope, str(status or 500))
            raise
        # No response at all (the client went away first) is recorded as such.
        await self._record(scope, str(status) if status is not None else "no-response")

    async def _record(self, scope: Scope, result: str) -> None:
        try:
            audit = self.audit_log_getter(scope["app"])
            record = functools.partial(audit.append, **self._entry(scope, result))
            # Shielded: a cancelled request (client gone, shutdown) is still recorded.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(record)
        except Exception:
            log.exception(
                "failed to write the audit entry for %s %s", scope["method"], scope["path"]
            )

    @staticmethod
    def _entry(scope: Scope, result: str) -> dict[str, Any]:
        method: str = scope["method"]
        path: str = scope["path"]
        template = route_template(scope)
        key = scope.get("state", {}).get("key")
        client = scope.get("client")
        details: dict[str, Any] = {"method": method, "route": template}
        query = _query_details(scope.get("query_string", b""))
        if query:
            details["query"] = query
        return {
            "actor": actor_of(key) if isinstance(key, KeyInfo) else ANONYMOUS,
            "action": action_name(method, template),
            "target": path,
            "source": client[0] if client else None,
            "result": result,
            "details": details,
        }


# ------------------------------------------------------------------- reading
# Who may read: the ``admin`` scope, decided in ``api.permissions`` like every route.


def get_audit_log(request: Request) -> AuditLog:
    return audit_log_of(request.app)


AuditLogDep = Annotated[AuditLog, Depends(get_audit_log)]

router = APIRouter(prefix=ADMIN_PREFIX, tags=["audit"], dependencies=[Depends(require_key)])


@router.get("/audit", response_model=list[AuditEntry])
async def list_audit(
    audit: AuditLogDep,
    actor: str | None = None,
    action: str | None = None,
    since: Annotated[datetime | None, Query(description="ISO-8601; naive means UTC")] = None,
    until: Annotated[datetime | None, Query(description="ISO-8601; exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    after_id: Annotated[int | None, Query(description="the last id of the previous page")] = None,
) -> list[AuditEntry]:
    """Entries oldest first; for the next page pass the last ``id`` as ``after_id``."""
    return await anyio.to_thread.run_sync(
        functools.partial(
            audit.list,
            actor=actor,
            action=action,
            since=since,
            until=until,
            limit=limit,
            after_id=after_id,
        )
    )


@router.get("/audit/verify", response_model=VerifyReport)
async def verify_audit(audit: AuditLogDep) -> VerifyReport:
    """Recompute the whole chain; ``head_hash`` is the value to anchor elsewhere."""
    return await anyio.to_thread.run_sync(audit.verify)
