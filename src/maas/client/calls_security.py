"""Descriptions of the access calls: API keys, usage, the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from maas.client.calls import ADMIN, Call, endpoint, jsonable, query
from maas.client.views import (
    AuditEntryDict,
    CreatedKeyDict,
    KeyDict,
    KeyPolicyDict,
    UsageDict,
    VerifyReportDict,
)


def _key_path(key_id: int) -> str:
    return f"{ADMIN}/keys/{int(key_id)}"


def _policy_body(policy: KeyPolicyDict) -> dict[str, Any]:
    return {name: jsonable(value) for name, value in policy.items()}


@endpoint
def create_key(name: str, policy: KeyPolicyDict | None = None) -> Call[CreatedKeyDict]:
    """A new key: ``{"key": "maas-sk-...", "info": {...}}``; the secret is shown only here."""
    body = {"name": name, **_policy_body(policy or {})}
    return Call("POST", f"{ADMIN}/keys", json=body)


@endpoint
def list_keys() -> Call[list[KeyDict]]:
    """Every key with its policy (never its secret)."""
    return Call("GET", f"{ADMIN}/keys")


@endpoint
def get_key(key_id: int) -> Call[KeyDict]:
    return Call("GET", _key_path(key_id))


@endpoint
def update_key(key_id: int, changes: KeyPolicyDict) -> Call[KeyDict]:
    """Change a key's policy: fields left out keep their value, ``None`` clears a limit."""
    return Call("PATCH", _key_path(key_id), json=_policy_body(changes))


@endpoint
def rotate_key(key_id: int) -> Call[CreatedKeyDict]:
    """A new secret with the same policy; the old key is revoked at once."""
    return Call("POST", f"{_key_path(key_id)}/rotate")


@endpoint
def revoke_key(key_id: int) -> Call[KeyDict]:
    """Revoke a key; it fails from the next request on."""
    return Call("DELETE", _key_path(key_id))


@endpoint
def usage(
    *,
    key: int | None = None,
    model: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    group_by: str = "day",
) -> Call[UsageDict]:
    """Usage sums per group (day, month, model, key, route, status); ``since`` inclusive,
    ``until`` exclusive."""
    params = query(key=key, model=model, group_by=group_by)
    params.update(query(**{"from": since, "to": until}))
    return Call("GET", f"{ADMIN}/usage", params=params)


@endpoint
def list_audit(
    *,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> Call[list[AuditEntryDict]]:
    """Audit entries oldest first; for the next page pass the last ``id`` as ``after_id``."""
    params = query(
        actor=actor, action=action, since=since, until=until, limit=limit, after_id=after_id
    )
    return Call("GET", f"{ADMIN}/audit", params=params)


@endpoint
def verify_audit() -> Call[VerifyReportDict]:
    """Recompute the whole hash chain, server-side (a long log may need a client with a
    longer ``timeout``)."""
    return Call("GET", f"{ADMIN}/audit/verify")
