"""``/admin/v1/models/{name}/rollouts``: canary rollouts of a candidate version.

The rollout is a registry record (``registry/rollouts.py``); the controller in
every serving process (``serving/rollouts.py``) judges it step by step. These
routes start one, show them (with each decision and its figures), and cancel one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from maas.api.deps import KeyDep, RegistryDep, actor, require_key, run_sync
from maas.registry.rollouts import cancel_rollout, get_rollout, list_rollouts, start_rollout

router = APIRouter(prefix="/admin/v1", tags=["rollouts"], dependencies=[Depends(require_key)])

_EXAMPLE = {
    "candidate": 2,
    "steps": [5, 25, 100],
    "step_seconds": 300,
    "criteria": {"max_error_rate_increase": 0.01, "max_p95_ratio": 1.5, "min_requests": 20},
}


@router.post("/models/{name}/rollouts", status_code=201)
async def create_rollout(
    name: str,
    registry: RegistryDep,
    key: KeyDep,
    body: Annotated[Any, Body(examples=[_EXAMPLE])],
) -> dict[str, Any]:
    """Start a rollout of ``candidate`` (a version number or ``"@alias"``) against the
    version ``production`` holds: ``steps`` are the candidate's percent of the traffic
    for plain ``name``, each held ``step_seconds`` and judged by ``criteria``; it then
    advances, promotes (moves ``production``) or rolls back by itself. 409 when the
    model has no ``production`` alias or a rollout is already running."""
    rollout = await run_sync(start_rollout, registry.db, name, body, actor=actor(key))
    return rollout.to_json()


@router.get("/models/{name}/rollouts")
async def read_rollouts(name: str, registry: RegistryDep) -> list[dict[str, Any]]:
    """The model's rollouts, newest first (their decisions: ``GET …/rollouts/{id}``)."""
    return [r.to_json() for r in await run_sync(list_rollouts, registry.db, name)]


@router.get("/models/{name}/rollouts/{rollout_id}")
async def read_rollout(name: str, rollout_id: int, registry: RegistryDep) -> dict[str, Any]:
    """One rollout with every decision so far and the figures it was made on."""
    return (await run_sync(get_rollout, registry.db, name, rollout_id)).to_json()


@router.post("/models/{name}/rollouts/{rollout_id}/cancel")
async def stop_rollout(
    name: str, rollout_id: int, registry: RegistryDep, key: KeyDep
) -> dict[str, Any]:
    """Stop a running rollout: traffic goes back to the baseline (409 once it ended)."""
    rollout = await run_sync(cancel_rollout, registry.db, name, rollout_id, actor=actor(key))
    return rollout.to_json()
