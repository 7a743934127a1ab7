"""Descriptions of the serving calls: deployment settings, routing, rollouts, schedules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from maas.client.calls import ADMIN, Call, Plan, endpoint, perform, segment
from maas.client.calls_registry import get_model, model_path, version_path
from maas.errors import NotFoundError

if TYPE_CHECKING:
    from maas.registry.deployments import DeploymentSpec


def _deployment(response: httpx.Response) -> DeploymentSpec:
    from maas.registry.deployments import DeploymentSpec  # its module needs SQLAlchemy

    return DeploymentSpec.from_json(response.json())


def _ignore(response: httpx.Response) -> None:
    return None


@endpoint
def get_deployment(ref: str) -> Call[DeploymentSpec]:
    return Call("GET", version_path(ref) + "/deployment", parse=_deployment)


@endpoint
def set_deployment(ref: str, **changes: Any) -> Call[DeploymentSpec]:
    """Change some deployment settings of a version; the others keep their values."""
    return Call("PUT", version_path(ref) + "/deployment", json=changes, parse=_deployment)


# ---------------------------------------------------------------- routing


@endpoint
def get_routing(name: str) -> Plan[dict[str, Any] | None]:
    """The model's routing policy (``PUT …/routing``'s fields, who and when), or None."""
    try:
        policy: dict[str, Any] = yield Call("GET", f"{model_path(name)}/routing")
    except NotFoundError:
        yield from perform(get_model.describe(name))  # an unknown model still raises
        return None
    return policy


@endpoint
def set_routing(name: str, policy: dict[str, Any]) -> Call[dict[str, Any]]:
    return Call("PUT", f"{model_path(name)}/routing", json=policy)


@endpoint
def clear_routing(name: str) -> Call[None]:
    return Call("DELETE", f"{model_path(name)}/routing", parse=_ignore)


# --------------------------------------------------------------- rollouts


@endpoint
def start_rollout(name: str, plan: dict[str, Any]) -> Call[dict[str, Any]]:
    """Start a canary rollout: ``{"candidate": 3, "steps": [5, 25, 100], ...}``."""
    return Call("POST", f"{model_path(name)}/rollouts", json=plan)


@endpoint
def list_rollouts(name: str) -> Call[list[dict[str, Any]]]:
    return Call("GET", f"{model_path(name)}/rollouts")


@endpoint
def get_rollout(name: str, rollout_id: int) -> Call[dict[str, Any]]:
    return Call("GET", f"{model_path(name)}/rollouts/{rollout_id}")


@endpoint
def cancel_rollout(name: str, rollout_id: int) -> Call[dict[str, Any]]:
    return Call("POST", f"{model_path(name)}/rollouts/{rollout_id}/cancel")


# -------------------------------------------------------------- schedules


def _schedule_path(name: str) -> str:
    return f"{ADMIN}/schedules/{segment(name)}"


@endpoint
def create_schedule(body: dict[str, Any]) -> Call[dict[str, Any]]:
    """Add a schedule that runs a retraining pipeline (``POST /admin/v1/schedules``)."""
    return Call("POST", f"{ADMIN}/schedules", json=body)


@endpoint
def list_schedules() -> Call[list[dict[str, Any]]]:
    return Call("GET", f"{ADMIN}/schedules")


@endpoint
def get_schedule(name: str) -> Call[dict[str, Any]]:
    """The schedule with its latest runs."""
    return Call("GET", _schedule_path(name))


@endpoint
def update_schedule(name: str, changes: dict[str, Any]) -> Call[dict[str, Any]]:
    return Call("PATCH", _schedule_path(name), json=changes)


@endpoint
def delete_schedule(name: str) -> Call[None]:
    return Call("DELETE", _schedule_path(name), parse=_ignore)


@endpoint
def run_schedule(name: str) -> Call[dict[str, Any]]:
    """Start a run of the schedule now (a pipeline job)."""
    return Call("POST", f"{_schedule_path(name)}/run")
