"""``/admin/v1/schedules``: cron schedules that run a model's retraining pipeline.

The schedule is a registry record (``jobs/schedules.py``); the scheduler beside the
job runner (``jobs/scheduler.py``) starts its runs, once across instances, as
``pipeline`` jobs (``jobs/pipeline.py``) that end in a canary rollout.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from maas.api.deps import AdmittedDep, KeyDep, RegistryDep, actor, require_key, run_sync
from maas.api.jobs import RunnerDep
from maas.jobs import schedules
from maas.jobs.runner import JobInfo
from maas.jobs.scheduler import run_now, schedule_runs

router = APIRouter(prefix="/admin/v1", tags=["schedules"], dependencies=[Depends(require_key)])

_EXAMPLE = {
    "name": "reviews-nightly",
    "model": "reviews-clf",
    "cron": "0 2 * * *",
    "timezone": "Europe/Paris",
    "pipeline": {
        "dataset": "reviews",
        "max_steps": 200,
        "slice_column": "lang",
        "gates": ["accuracy>=0.85", "slice_gap<=0.1"],
        "rollout": {"steps": [5, 25, 100], "step_seconds": 600},
    },
}


@router.post("/schedules", status_code=201)
async def create_schedule(
    registry: RegistryDep,
    key: KeyDep,
    admitted: AdmittedDep,
    body: Annotated[Any, Body(examples=[_EXAMPLE])],
) -> dict[str, Any]:
    """Add a schedule: at each time ``cron`` names (in ``timezone``, default UTC) a
    ``pipeline`` job takes the dataset's newest version, trains from the model's
    production version, evaluates, checks ``gates`` and starts a canary ``rollout``."""
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        admitted.ensure_model(body["model"])
    made = await run_sync(schedules.create_schedule, registry.db, body, actor=actor(key))
    return made.to_json()


@router.get("/schedules")
async def read_schedules(registry: RegistryDep) -> list[dict[str, Any]]:
    """Every schedule, by name."""
    return [s.to_json() for s in await run_sync(schedules.list_schedules, registry.db)]


@router.get("/schedules/{schedule}")
async def read_schedule(schedule: str, registry: RegistryDep, runner: RunnerDep) -> dict[str, Any]:
    """One schedule with its latest runs (pipeline jobs, newest first)."""
    found = await run_sync(schedules.get_schedule, registry.db, schedule)
    runs = await run_sync(schedule_runs, runner, found)
    return {**found.to_json(), "runs": [r.model_dump(mode="json") for r in runs]}


@router.patch("/schedules/{schedule}")
async def change_schedule(
    schedule: str, registry: RegistryDep, body: Annotated[Any, Body()]
) -> dict[str, Any]:
    """Change ``enabled`` (pause or resume), ``cron``, ``timezone`` or ``pipeline``."""
    return (await run_sync(schedules.update_schedule, registry.db, schedule, body)).to_json()


@router.delete("/schedules/{schedule}")
async def remove_schedule(schedule: str, registry: RegistryDep) -> dict[str, Any]:
    """Delete the schedule; runs it started go on."""
    await run_sync(schedules.delete_schedule, registry.db, schedule)
    return {"name": schedule, "deleted": True}


@router.post("/schedules/{schedule}/run", status_code=201)
async def run_schedule(
    schedule: str, registry: RegistryDep, runner: RunnerDep, key: KeyDep
) -> JobInfo:
    """Start a run now, outside the cron times (409 while the previous run is active)."""
    found = await run_sync(schedules.get_schedule, registry.db, schedule)
    return await run_sync(run_now, runner, found, actor(key))
