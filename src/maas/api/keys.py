"""``/admin/v1/keys`` and ``/admin/v1/usage``: key management and usage reports."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from maas.api.bodies import JsonBodyRoute
from maas.api.deps import get_keys, require_key, run_sync
from maas.security.keys import (
    KeyInfo,
    KeyPolicy,
    KeyStore,
    ModelPatterns,
    MonthlyQuota,
    Owner,
    PerMinuteLimit,
)
from maas.security.usage import GROUP_BY, aggregate

router = APIRouter(
    prefix="/admin/v1",
    tags=["keys"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)


KeysDep = Annotated[KeyStore, Depends(get_keys)]
MAX_ID = 2**31 - 1  # ids are 32-bit in every database we support; larger is a 404 anyway
KeyId = Annotated[int, Path(ge=1, le=MAX_ID, description="Key id")]


class CreateKeyRequest(KeyPolicy):
    name: str = Field(min_length=1, max_length=128)


class UpdateKeyRequest(BaseModel):
    """Fields to change; those left out keep their value, ``null`` clears a limit."""

    model_config = ConfigDict(extra="forbid")

    scopes: list[str] | None = None
    owner: Owner | None = None
    models: ModelPatterns | None = None
    expires_at: datetime | None = None
    rpm_limit: PerMinuteLimit | None = None
    tpm_limit: PerMinuteLimit | None = None
    monthly_token_quota: MonthlyQuota | None = None
    monthly_request_quota: MonthlyQuota | None = None
    pii_policy: str | None = None


class CreatedKey(BaseModel):
    key: str = Field(description="The secret. Shown once; only its hash is stored.")
    info: KeyInfo


@router.get("/keys", response_model=list[KeyInfo])
async def list_keys(keys: KeysDep) -> list[KeyInfo]:
    return await run_sync(keys.list)


@router.post("/keys", response_model=CreatedKey, status_code=201)
async def create_key(body: CreateKeyRequest, keys: KeysDep) -> CreatedKey:
    policy = KeyPolicy(**body.model_dump(exclude={"name"}))
    info, plaintext = await run_sync(keys.create, body.name, None, policy)
    return CreatedKey(key=plaintext, info=info)


@router.get("/keys/{key_id}", response_model=KeyInfo)
async def get_key(key_id: KeyId, keys: KeysDep) -> KeyInfo:
    return await run_sync(keys.get, key_id)


@router.patch("/keys/{key_id}", response_model=KeyInfo)
async def update_key(key_id: KeyId, body: UpdateKeyRequest, keys: KeysDep) -> KeyInfo:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("scopes") is None:
        changes.pop("scopes", None)
    if changes.get("models") is None:
        changes.pop("models", None)
    return await run_sync(keys.update, key_id, changes)


@router.delete("/keys/{key_id}", response_model=KeyInfo)
async def revoke_key(key_id: KeyId, keys: KeysDep) -> KeyInfo:
    """Revoke a key; it fails from the next request on."""
    return await run_sync(keys.revoke, key_id)


@router.post("/keys/{key_id}/rotate", response_model=CreatedKey)
async def rotate_key(key_id: KeyId, keys: KeysDep) -> CreatedKey:
    """A new secret with the same policy; the old key is revoked at once."""
    info, plaintext = await run_sync(keys.rotate, key_id)
    return CreatedKey(key=plaintext, info=info)


@router.get("/usage")
async def usage(
    request: Request,
    key: Annotated[int | None, Query(description="Key id", ge=1, le=MAX_ID)] = None,
    model: str | None = None,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    group_by: Annotated[str, Query(description=", ".join(GROUP_BY))] = "day",
) -> dict[str, Any]:
    """Usage sums per group; ``from`` inclusive, ``to`` exclusive (ISO 8601)."""
    await request.app.state.usage.flush()  # a report includes requests just served
    rows = await run_sync(
        aggregate,
        request.app.state.registry.db,
        key_id=key,
        model=model,
        since=start,
        until=end,
        group_by=group_by,
    )
    return {"object": "list", "group_by": group_by, "data": rows}
