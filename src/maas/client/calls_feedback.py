"""Descriptions of the feedback calls: label a prediction, export labelled feedback as a
dataset, read a model's live accuracy and drift."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from maas.client.calls import Call, endpoint, jsonable
from maas.client.calls_registry import model_path
from maas.client.views import FeedbackDict, FeedbackExportDict, MonitoringDict


@endpoint
def post_feedback(
    prediction_id: str,
    *,
    label: str | None = None,
    score: float | None = None,
    index: int = 0,
) -> Call[FeedbackDict]:
    """Attach the right ``label`` (or a ``score``) to a prediction, by the
    ``x-maas-prediction-id`` its answer carried; the latest feedback given wins."""
    body = {"prediction_id": prediction_id, "index": index, "label": label, "score": score}
    return Call("POST", "/v1/feedback", json=body)


@endpoint
def export_feedback(
    model: str,
    dataset: str,
    *,
    versions: Sequence[int] | None = None,
    since: datetime | str | None = None,
    description: str = "",
) -> Call[FeedbackExportDict]:
    """Write ``model``'s labelled feedback (with captured inputs) as the next version of
    ``dataset`` (text, label)."""
    body = {
        "dataset": dataset,
        "versions": list(versions) if versions else None,
        "since": jsonable(since),
        "description": description,
    }
    return Call("POST", f"{model_path(model)}/feedback/export", json=body)


@endpoint
def monitoring(model: str) -> Call[MonitoringDict]:
    """Per served version: live accuracy from feedback, and each feature's drift test."""
    return Call("GET", f"{model_path(model)}/monitoring")
