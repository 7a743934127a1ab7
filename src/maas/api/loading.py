"""``/admin/v1``: load, unload and list the models held in memory; deployment settings.

Load, unload and the deployment settings are recorded in the registry
(``registry/deployments.py``), so they reach every instance: the one that
answers acts at once, the others within the change-epoch poll
(``serving/reconcile.py``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from maas.api.deps import (
    DataPlaneDep,
    KeyDep,
    RegistryDep,
    actor,
    require_key,
    run_sync,
    version_ref,
)
from maas.api.schemas.admin import DeploymentRequest
from maas.registry.store import Registry

router = APIRouter(prefix="/admin/v1", tags=["serving"], dependencies=[Depends(require_key)])


@router.get("/loaded")
async def list_loaded(dataplane: DataPlaneDep) -> dict[str, Any]:
    """Models in memory, most recently used last, the memory budget they share, and
    why the last load of a version failed (cleared when it loads)."""
    status = await dataplane.host.status()
    return {
        "budget_bytes": status.budget_bytes,
        "used_bytes": status.used_bytes,
        "models": [asdict(m) for m in status.models],
        "load_failures": status.load_failures,
    }


@router.post("/models/{name}/versions/{version}/load")
async def load_version(
    name: str,
    version: str,
    dataplane: DataPlaneDep,
    key: KeyDep,
    pin: Annotated[bool, Query(description="Never evict this model to make room.")] = False,
) -> dict[str, Any]:
    """Load a version now on every instance (instead of on its first request), and on
    instances that start later; ``pin`` keeps it loaded. Answers once loaded here; the
    other instances follow within a second of the answer."""
    info = await dataplane.resolve(version_ref(name, version))
    # Here first: a version that fails to load answers 503 and is not spread.
    loaded = await dataplane.host.load(info, pinned=pin)
    await run_sync(
        dataplane.registry.set_deployment,
        info.model,
        info.version,
        actor=actor(key),
        loaded=True,
        pinned=pin,
    )
    return asdict(loaded)


@router.post("/models/{name}/versions/{version}/unload")
async def unload_version(
    name: str, version: str, dataplane: DataPlaneDep, key: KeyDep
) -> dict[str, Any]:
    """Unload a version on every instance; in-flight requests finish first. A later
    request loads it again on demand. Not loaded here: ``unloaded`` is false."""
    info = await dataplane.resolve(version_ref(name, version))
    # Here first, so that the answer says whether this instance had it loaded.
    unloaded = await dataplane.host.unload(info.ref)
    await run_sync(
        dataplane.registry.set_deployment,
        info.model,
        info.version,
        actor=actor(key),
        loaded=False,
        pinned=False,
    )
    return {"ref": info.ref, "unloaded": unloaded}


async def _version_number(registry: Registry, name: str, version: str) -> int:
    """``3`` is version 3 (no query); an alias is resolved to the version it names now."""
    if version.isascii() and version.isdigit():
        return int(version)
    return (await run_sync(registry.get_version, version_ref(name, version))).version


@router.get("/models/{name}/versions/{version}/deployment")
async def get_deployment(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    """How the version is served (the defaults when nothing was set)."""
    number = await _version_number(registry, name, version)
    return (await run_sync(registry.get_deployment, name, number)).to_json()


@router.put("/models/{name}/versions/{version}/deployment")
async def set_deployment(
    name: str, version: str, body: DeploymentRequest, registry: RegistryDep, key: KeyDep
) -> dict[str, Any]:
    """Change how the version is served; fields not sent keep their values. An alias in
    the path names the version it points at now: the settings stay with that version."""
    number = await _version_number(registry, name, version)
    changes = body.model_dump(exclude_unset=True)
    spec = await run_sync(registry.set_deployment, name, number, actor=actor(key), **changes)
    return spec.to_json()
