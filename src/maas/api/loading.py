"""``/admin/v1``: load, unload and list the models held in memory."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from maas.api.admin import version_ref
from maas.api.deps import require_key
from maas.serving.dataplane import DataPlane
from maas.serving.manager import LoadedModel

router = APIRouter(prefix="/admin/v1", tags=["serving"], dependencies=[Depends(require_key)])


def _dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


DataPlaneDep = Annotated[DataPlane, Depends(_dataplane)]


def _view(model: LoadedModel) -> dict[str, Any]:
    return {
        "model": model.version.model,
        "version": model.version.version,
        "ref": model.key,
        "task": model.version.task,
        "format": model.version.format,
        "memory_bytes": model.memory,
        "pinned": model.pinned,
        "active_requests": model.active,
        "queued_items": model.batcher.queue_depth,
        "loaded_at": model.loaded_at,
        "idle_seconds": round(time.monotonic() - model.last_used, 3),
    }


@router.get("/loaded")
async def list_loaded(dataplane: DataPlaneDep) -> dict[str, Any]:
    """Models in memory, most recently used last, and the memory budget they share."""
    manager = dataplane.manager
    return {
        "budget_bytes": manager.budget,
        "used_bytes": manager.used_bytes(),
        "models": [_view(m) for m in manager.loaded()],
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
    model = await dataplane.manager.get(info, pinned=pin)
    if not pin:
        model.pinned = False  # an explicit load without pin also releases an earlier pin
    return _view(model)


@router.post("/models/{name}/versions/{version}/unload")
async def unload_version(name: str, version: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    """Unload a version; in-flight requests finish first. Not loaded: ``unloaded`` is false."""
    info = await dataplane.resolve(version_ref(name, version))
    return {"ref": info.ref, "unloaded": await dataplane.manager.unload(info.ref)}
