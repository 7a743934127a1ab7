"""Feedback: ``POST /v1/feedback`` attaches a label or a score to a prediction, and
``POST /admin/v1/models/{name}/feedback/export`` turns labelled feedback into a dataset.

Every inference answer names its prediction (``answer_headers``):
``x-maas-prediction-id`` and ``x-maas-model-version: <model>:<version>``. Which
predictions are recorded, and what of them, is ``maas.serving.feedback``.

A caller may give feedback on a prediction of a model its key may use (the
allowlist, scope ``infer``); on any other it gets the same 404 as for an unknown
id, so a key cannot probe for other models' predictions. Predictions are
written a fraction of a second after they are answered: feedback that arrives
first flushes this process's pending rows, or waits one flush for a fresh id
that another worker or instance answered.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from maas.api.bodies import JsonBodyRoute
from maas.api.deps import (
    AdmittedDep,
    KeyDep,
    RegistryDep,
    SettingsDep,
    actor,
    require_key,
    run_sync,
)
from maas.errors import InvalidRequestError, NotFoundError
from maas.jobs.feedback_export import export_feedback
from maas.registry.feedback import (
    PredictionInfo,
    attach_feedback,
    count_items,
    feedback_stats,
    get_prediction,
)
from maas.registry.refs import validate_model_name
from maas.serving.context import RequestContext
from maas.serving.feedback import PredictionRecorder, prediction_age

PREDICTION_HEADER = "x-maas-prediction-id"
VERSION_HEADER = "x-maas-model-version"
# An id younger than this may be answered but not written yet (by another process).
FRESH_SECONDS = 5

router = APIRouter(
    prefix="/v1", tags=["openai"], dependencies=[Depends(require_key)], route_class=JsonBodyRoute
)
admin = APIRouter(
    prefix="/admin/v1",
    tags=["monitoring"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)


def answer_headers(ctx: RequestContext) -> dict[str, str]:
    """The headers every inference answer carries."""
    return {PREDICTION_HEADER: ctx.prediction_id, VERSION_HEADER: f"{ctx.model}:{ctx.version}"}


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(min_length=1, max_length=64, description="x-maas-prediction-id")
    index: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Which item of the prediction: the text of a V2 request, the choice of a "
        "completion (0 for a single one)",
    )
    label: str | None = Field(
        default=None, min_length=1, max_length=200, description="The right label"
    )
    score: float | None = Field(default=None, description="A rating of the answer (any number)")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="Dataset to write the next version of")
    versions: list[int] | None = Field(default=None, description="Only these model versions")
    since: datetime | None = Field(default=None, description="Only feedback given since then")
    description: str = ""


def _recorder(request: Request) -> PredictionRecorder:
    recorder: PredictionRecorder | None = getattr(request.app.state, "predictions", None)
    if recorder is None:
        raise NotFoundError("feedback is off on this server (MAAS_FEEDBACK=false)")
    return recorder


async def _find(recorder: PredictionRecorder, prediction_id: str, index: int) -> PredictionInfo:
    db = recorder.db
    info = await run_sync(get_prediction, db, prediction_id, index)
    if info is None and recorder.pending(prediction_id):
        await recorder.flush()
        info = await run_sync(get_prediction, db, prediction_id, index)
    age = prediction_age(prediction_id)
    if info is None and age is not None and 0 <= age <= FRESH_SECONDS:
        await asyncio.sleep(recorder.flush_seconds + 0.2)  # another process's next write
        info = await run_sync(get_prediction, db, prediction_id, index)
    if info is not None:
        return info
    items = await run_sync(count_items, db, prediction_id)
    if items:
        raise InvalidRequestError(
            f"index {index} is out of range: prediction {prediction_id!r} has {items} item(s)",
            param="index",
        )
    raise NotFoundError(
        f"no recorded prediction {prediction_id!r}: the id is unknown, or its model's answers "
        "are not recorded for feedback (embedding and tensor models are not)",
        param="prediction_id",
    )


@router.post("/feedback")
async def post_feedback(
    request: Request, body: FeedbackRequest, admitted: AdmittedDep, settings: SettingsDep
) -> dict[str, Any]:
    """Attach a label or a score to a prediction (the latest feedback given wins)."""
    if (body.label is None) == (body.score is None):
        raise InvalidRequestError("give exactly one of label and score", param="label")
    if body.score is not None and not math.isfinite(body.score):
        raise InvalidRequestError("score must be a finite number", param="score")
    recorder = _recorder(request)
    info = await _find(recorder, body.prediction_id, body.index)
    admitted.ensure_model(info.model, hide=True)
    key_id = admitted.key.id if admitted.key is not None else None
    found = await run_sync(
        attach_feedback,
        recorder.db,
        info.prediction_id,
        info.item,
        label=body.label,
        score=body.score,
        key_id=key_id,
    )
    if not found:  # pragma: no cover - deleted between the two statements
        raise NotFoundError(f"no recorded prediction {body.prediction_id!r}", param="prediction_id")
    stats = await run_sync(
        feedback_stats, recorder.db, info.model, info.version, settings.feedback_window
    )
    recorder.publish(stats)
    return {
        "object": "feedback",
        "prediction_id": info.prediction_id,
        "index": info.item,
        "model": info.model,
        "version": info.version,
        "label": body.label,
        "score": body.score,
        "predicted": info.output_label,
        "correct": None
        if body.label is None or info.output_label is None
        else body.label == info.output_label,
    }


@admin.post("/models/{name}/feedback/export")
async def export(
    name: str, body: ExportRequest, registry: RegistryDep, key: KeyDep
) -> dict[str, Any]:
    """Labelled feedback with captured inputs -> the next version of a dataset (text,label)."""
    validate_model_name(body.dataset, param="dataset")
    info, rows = await run_sync(
        export_feedback,
        registry,
        name,
        body.dataset,
        versions=body.versions,
        since=body.since,
        description=body.description,
        created_by=actor(key),
    )
    return {"rows": rows, "dataset": info.model_dump(mode="json")}
