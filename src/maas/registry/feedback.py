"""Recorded predictions and their feedback: the ``predictions`` table's operations.

The serving side (``maas.serving.feedback``) writes predictions in batches; the
API attaches a label or a score to one; live accuracy, summaries and the export
to a dataset read them back. Everything here is synchronous database work:
callers run it on a worker thread.

Accuracy is counted over the newest ``window`` predictions *with a label* of a
version (by the time the label came): it follows the model as it is used now,
and a burst of old labels arriving late cannot hide a recent drop for long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from maas.registry.db import Database
from maas.registry.models import PredictionRow


@dataclass(slots=True)
class PredictionRecord:
    """One prediction as the data plane records it (the row without feedback)."""

    prediction_id: str
    item: int
    model: str
    version: int
    task: str
    created_at: datetime
    key_id: int | None = None
    output_label: str | None = None
    output_score: float | None = None
    input_text: str | None = None


_RECORD_FIELDS = tuple(f.name for f in fields(PredictionRecord))


@dataclass(frozen=True, slots=True)
class PredictionInfo:
    prediction_id: str
    item: int
    model: str
    version: int
    task: str
    output_label: str | None


@dataclass(frozen=True, slots=True)
class FeedbackStats:
    """Feedback of one version over the window (``accuracy`` None: no comparable label)."""

    model: str
    version: int
    window: int
    labelled: int  # labels in the window on predictions that had an output label
    correct: int
    accuracy: float | None
    scored: int
    mean_score: float | None
    total_feedback: int  # every label or score ever given to this version

    def as_dict(self) -> dict[str, Any]:
        return {name.name: getattr(self, name.name) for name in fields(self)}


def write_predictions(db: Database, records: Sequence[PredictionRecord]) -> None:
    """One executemany INSERT (the same reasoning as usage records: no ORM object a row)."""
    if not records:
        return
    rows = [{name: getattr(r, name) for name in _RECORD_FIELDS} for r in records]
    with db.write() as s:
        s.execute(insert(PredictionRow), rows)


def get_prediction(db: Database, prediction_id: str, item: int) -> PredictionInfo | None:
    with db.read() as s:
        row = s.get(PredictionRow, (prediction_id, item))
        if row is None:
            return None
        return PredictionInfo(
            row.prediction_id, row.item, row.model, row.version, row.task, row.output_label
        )


def count_items(db: Database, prediction_id: str) -> int:
    """How many items the prediction has (to name the valid ``index`` range)."""
    with db.read() as s:
        query = select(func.count()).where(PredictionRow.prediction_id == prediction_id)
        return int(s.scalar(query) or 0)


def attach_feedback(
    db: Database,
    prediction_id: str,
    item: int,
    *,
    label: str | None,
    score: float | None,
    key_id: int | None,
) -> bool:
    """Set the feedback of one prediction (the latest given wins); False if it is unknown."""
    with db.write() as s:
        result = s.execute(
            update(PredictionRow)
            .where(PredictionRow.prediction_id == prediction_id, PredictionRow.item == item)
            .values(
                feedback_label=label,
                feedback_score=score,
                feedback_at=datetime.now(UTC),
                feedback_key_id=key_id,
            )
        )
        return bool(getattr(result, "rowcount", 0))


def feedback_stats(db: Database, model: str, version: int, window: int) -> FeedbackStats:
    with db.read() as s:
        base = (PredictionRow.model == model, PredictionRow.version == version)
        labelled = s.execute(
            select(PredictionRow.output_label, PredictionRow.feedback_label)
            .where(*base, PredictionRow.feedback_label.is_not(None))
            .where(PredictionRow.output_label.is_not(None))
            .order_by(PredictionRow.feedback_at.desc())
            .limit(window)
        ).all()
        scores: list[float] = [
            float(v)
            for v in s.scalars(
                select(PredictionRow.feedback_score)
                .where(*base, PredictionRow.feedback_score.is_not(None))
                .order_by(PredictionRow.feedback_at.desc())
                .limit(window)
            )
            if v is not None
        ]
        total = s.scalar(select(func.count()).where(*base, PredictionRow.feedback_at.is_not(None)))
    correct = sum(1 for output, given in labelled if output == given)
    return FeedbackStats(
        model=model,
        version=version,
        window=window,
        labelled=len(labelled),
        correct=correct,
        accuracy=correct / len(labelled) if labelled else None,
        scored=len(scores),
        mean_score=sum(scores) / len(scores) if scores else None,
        total_feedback=int(total or 0),
    )


def versions_with_feedback(db: Database, model: str) -> list[int]:
    with db.read() as s:
        query = (
            select(PredictionRow.version)
            .where(PredictionRow.model == model, PredictionRow.feedback_at.is_not(None))
            .distinct()
            .order_by(PredictionRow.version)
        )
        return [int(v) for v in s.scalars(query)]


def labelled_examples(
    db: Database,
    model: str,
    *,
    versions: Sequence[int] | None = None,
    since: datetime | None = None,
) -> list[tuple[str, str, int]]:
    """``(text, label, version)`` of every labelled prediction whose input was captured,
    oldest first: the rows an export turns into a dataset."""
    query = (
        select(PredictionRow.input_text, PredictionRow.feedback_label, PredictionRow.version)
        .where(PredictionRow.model == model)
        .where(PredictionRow.feedback_label.is_not(None), PredictionRow.input_text.is_not(None))
        .order_by(PredictionRow.created_at, PredictionRow.prediction_id, PredictionRow.item)
    )
    if versions:
        query = query.where(PredictionRow.version.in_(list(versions)))
    if since is not None:
        query = query.where(PredictionRow.feedback_at >= since)
    with db.read() as s:
        return [(str(t), str(label), int(v)) for t, label, v in s.execute(query)]
