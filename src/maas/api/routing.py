"""``/admin/v1/models/{name}/routing``: a model's routing policy (weighted split, shadow).

The policy is a registry record (``registry/routing.py``): setting or clearing
it reaches every instance within the change-epoch poll, and each change is kept
in its history.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from maas.api.deps import KeyDep, RegistryDep, actor, require_key, run_sync
from maas.errors import NotFoundError
from maas.registry.routing import clear_routing, get_routing, routing_history, set_routing

router = APIRouter(prefix="/admin/v1", tags=["routing"], dependencies=[Depends(require_key)])

_EXAMPLE = {"split": {"1": 90, "2": 10}, "sticky": None, "shadow": {"version": 3, "fraction": 0.2}}


@router.get("/models/{name}/routing")
async def read_routing(name: str, registry: RegistryDep) -> dict[str, Any]:
    """The model's routing policy; 404 when it has none (plain requests get ``production``)."""
    policy = await run_sync(get_routing, registry.db, name)
    if policy is None:
        raise NotFoundError(
            f"model {name!r} has no routing policy: requests for {name!r} get its "
            "production alias (else its latest ready version)",
            param="model",
        )
    return policy.to_json()


@router.put("/models/{name}/routing")
async def write_routing(
    name: str,
    registry: RegistryDep,
    key: KeyDep,
    body: Annotated[Any, Body(examples=[_EXAMPLE])],
) -> dict[str, Any]:
    """Set the policy: ``split`` (weights over version numbers and ``@alias`` targets),
    ``sticky`` (``"key"``: each API key stays on one target) and ``shadow`` (a version that
    also gets a fraction of the requests, its answers recorded and never returned)."""
    policy = await run_sync(set_routing, registry.db, name, body, actor=actor(key))
    return policy.to_json()


@router.delete("/models/{name}/routing")
async def delete_routing(name: str, registry: RegistryDep, key: KeyDep) -> dict[str, Any]:
    """Clear the policy: plain requests get the ``production`` alias again."""
    await run_sync(clear_routing, registry.db, name, actor=actor(key))
    return {"model": name, "deleted": True}


@router.get("/models/{name}/routing/history")
async def read_routing_history(name: str, registry: RegistryDep) -> list[dict[str, Any]]:
    """Every change of the policy, oldest first (``policy`` null: cleared)."""
    events = await run_sync(routing_history, registry.db, name)
    return [e.to_json() for e in events]
