"""``GET /admin/v1/models/{name}/monitoring``: drift and live accuracy of a model's versions.

Drift comes from this process's monitor (``serving/monitoring.py``: the versions
it has served since it started); live accuracy from the database, so it counts
the feedback every worker and instance took.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from maas.api.deps import RegistryDep, SettingsDep, require_key, run_sync
from maas.registry.feedback import feedback_stats, versions_with_feedback
from maas.registry.store import Registry
from maas.serving.monitoring import DriftMonitor

router = APIRouter(prefix="/admin/v1", tags=["monitoring"], dependencies=[Depends(require_key)])


@router.get("/models/{name}/monitoring")
async def model_monitoring(
    name: str, request: Request, registry: RegistryDep, settings: SettingsDep
) -> dict[str, Any]:
    """Per served version: each feature's drift test against the reference (statistic,
    p-value, threshold, crossed, window and reference sizes), and live accuracy."""
    await run_sync(registry.get_model, name)  # 404 for an unknown model
    monitor: DriftMonitor | None = request.app.state.dataplane.monitor
    drift = {r.version: r.as_dict() for r in monitor.report(name)} if monitor else {}
    feedback = await run_sync(_feedback, registry, name, settings.feedback_window)
    versions = sorted(set(drift) | set(feedback))
    return {
        "model": name,
        "monitoring": monitor is not None,
        "window": monitor.window if monitor else settings.monitoring_window,
        "threshold": monitor.alpha if monitor else settings.monitoring_alpha,
        "feedback_window": settings.feedback_window,
        "versions": [
            {"version": v, "drift": drift.get(v), "feedback": feedback.get(v)} for v in versions
        ],
    }


def _feedback(registry: Registry, name: str, window: int) -> dict[int, dict[str, Any]]:
    return {
        v: feedback_stats(registry.db, name, v, window).as_dict()
        for v in versions_with_feedback(registry.db, name)
    }
