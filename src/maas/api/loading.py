"""``/admin/v1``: load, unload and list the models held in memory."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from maas.api.admin import version_ref
from maas.api.deps import DataPlaneDep, require_key

router = APIRouter(prefix="/admin/v1", tags=["serving"], dependencies=[Depends(require_key)])


@router.get("/loaded")
async def list_loaded(dataplane: DataPlaneDep) -> dict[str, Any]:
    """Models in memory, most recently used last, and the memory budget they share."""
    status = await dataplane.host.status()
    return {
        "budget_bytes": status.budget_bytes,
        "used_bytes": status.used_bytes,
        "models": [asdict(m) for m in status.models],
    }


@router.post("/models/{name}/versions/{version}/load")
async def load_version(
    name: str,
    version: str,
    dataplane: DataPlaneDep,
    pin: Annotated[bool, Query(description="Never evict this model to make room.")] = False,
) -> dict[str, Any]:
    """Load a version now (instead of on its first request); ``pin`` keeps it loaded."""
    info = await dataplane.resolve(version_ref(name, version))
    return asdict(await dataplane.host.load(info, pinned=pin))


@router.post("/models/{name}/versions/{version}/unload")
async def unload_version(name: str, version: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    """Unload a version; in-flight requests finish first. Not loaded: ``unloaded`` is false."""
    info = await dataplane.resolve(version_ref(name, version))
    return {"ref": info.ref, "unloaded": await dataplane.host.unload(info.ref)}
