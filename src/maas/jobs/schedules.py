"""Schedules: a cron expression that runs a model's retraining pipeline.

A schedule names a model, a cron expression with its timezone, and the spec of
the ``pipeline`` job it runs (``jobs/pipeline.py``: newest dataset → train from
production → evaluate → gates → canary rollout). Cron is parsed by ``croniter``
(five fields; a sixth, croniter's extension, gives seconds); times are computed
in the schedule's timezone (``zoneinfo``), so "every day at 02:00" stays at 02:00
local time across daylight-saving changes, and stored in UTC.

**Once across instances.** ``next_run_at`` is a compare-and-set token: an
instance that finds a schedule due moves ``next_run_at`` to the next time after
now, in an UPDATE that matches the old value; only the instance whose UPDATE
changed the row starts the run. Runs missed while no server was up are not
replayed one by one: the first tick after them starts one run and moves on.

**No overlap.** A run is not started while the schedule's previous run is still
queued or running; the skipped time is noted on the schedule (``last_note``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]  # no inline types
from sqlalchemy import select, update

from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.jobs.pipeline import check_spec
from maas.jobs.specs import validate_spec
from maas.registry.db import Database
from maas.registry.models import ModelRow, ScheduleRow, utcnow
from maas.registry.refs import validate_model_name
from maas.registry.rows import model_row

PIPELINE_KIND = "pipeline"
_FIELDS = {"name", "model", "cron", "timezone", "pipeline", "enabled"}


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    model: str
    cron: str
    timezone: str
    pipeline: dict[str, Any]
    enabled: bool
    next_run_at: datetime
    last_run_at: datetime | None
    last_job_id: str | None
    last_note: str | None
    created_at: datetime
    created_by: str | None

    def job_spec(self, due: datetime) -> dict[str, Any]:
        """The spec of the pipeline job this schedule starts for the run due at ``due``."""
        return {
            **self.pipeline,
            "model": self.model,
            "schedule": self.name,
            "scheduled_for": due.isoformat(),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "cron": self.cron,
            "timezone": self.timezone,
            "pipeline": self.pipeline,
            "enabled": self.enabled,
            "next_run_at": self.next_run_at.isoformat(),
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "last_job_id": self.last_job_id,
            "last_note": self.last_note,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


def next_time(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``cron`` names in ``timezone`` (UTC)."""
    local = after.astimezone(ZoneInfo(timezone))
    found: datetime = croniter(cron, local).get_next(datetime)
    return found.astimezone(UTC)


def _check_cron(cron: Any) -> str:
    if not isinstance(cron, str) or not croniter.is_valid(cron) or len(cron) > 120:
        raise InvalidRequestError(
            f"cron {cron!r} is not a cron expression: five fields, minute hour day month "
            'weekday, e.g. "0 2 * * *" (a sixth field gives seconds)',
            param="cron",
        )
    return cron


def _check_timezone(timezone: Any) -> str:
    try:
        if not isinstance(timezone, str) or not timezone:
            raise ValueError(timezone)
        ZoneInfo(timezone)
    except (ValueError, ZoneInfoNotFoundError):
        raise InvalidRequestError(
            f"timezone {timezone!r} is not an IANA timezone such as UTC or Europe/Paris",
            param="timezone",
        ) from None
    return timezone


def _check_pipeline(raw: Any, model: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequestError("pipeline must be a JSON object", param="pipeline")
    for key in ("model", "schedule", "scheduled_for"):
        if key in raw:
            raise InvalidRequestError(
                f"pipeline.{key} is set by the schedule; leave it out", param="pipeline"
            )
    spec = dict(raw)
    validate_spec(PIPELINE_KIND, {**spec, "model": model})
    if not spec.get("dataset"):
        raise InvalidRequestError("pipeline.dataset is required", param="pipeline")
    check_spec(spec)
    return spec


def create_schedule(db: Database, body: Any, *, actor: str | None = None) -> Schedule:
    """Add a schedule (400 naming the bad field; 409 when the name is taken)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("a schedule is a JSON object", param="name")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"unknown schedule field(s) {', '.join(unknown)}: expected "
            f"{', '.join(sorted(_FIELDS))}",
            param=unknown[0],
        )
    name = validate_model_name(str(body.get("name") or ""), param="name")
    model = validate_model_name(str(body.get("model") or ""), param="model")
    cron = _check_cron(body.get("cron"))
    timezone = _check_timezone(body.get("timezone", "UTC"))
    pipeline = _check_pipeline(body.get("pipeline", {}), model)
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidRequestError("enabled must be true or false", param="enabled")
    now = utcnow()
    with db.write() as s:
        target = model_row(s, model)
        if s.scalar(select(ScheduleRow.id).where(ScheduleRow.name == name)) is not None:
            raise ConflictError(f"schedule {name!r} already exists", param="name")
        row = ScheduleRow(
            name=name,
            model_id=target.id,
            cron=cron,
            timezone=timezone,
            pipeline=json.dumps(pipeline, sort_keys=True),
            enabled=enabled,
            next_run_at=next_time(cron, timezone, now),
            created_at=now,
            created_by=actor,
            updated_at=now,
        )
        s.add(row)
        s.flush()
        return _schedule(row, model)


def update_schedule(db: Database, name: str, body: Any) -> Schedule:
    """Change ``enabled``, ``cron``, ``timezone`` or ``pipeline``; the next run is
    recomputed from now when the timing changes or the schedule is enabled again."""
    if not isinstance(body, dict) or not body:
        raise InvalidRequestError("send the fields to change as a JSON object", param="name")
    unknown = sorted(set(body) - {"enabled", "cron", "timezone", "pipeline"})
    if unknown:
        raise InvalidRequestError(
            f"these schedule fields cannot be changed: {', '.join(unknown)}", param=unknown[0]
        )
    with db.write() as s:
        row, model = _row(s, name)
        if "enabled" in body:
            if not isinstance(body["enabled"], bool):
                raise InvalidRequestError("enabled must be true or false", param="enabled")
            row.enabled = body["enabled"]
        if "cron" in body:
            row.cron = _check_cron(body["cron"])
        if "timezone" in body:
            row.timezone = _check_timezone(body["timezone"])
        if "pipeline" in body:
            row.pipeline = json.dumps(_check_pipeline(body["pipeline"], model), sort_keys=True)
        now = utcnow()
        if {"cron", "timezone"} & set(body) or body.get("enabled") is True:
            row.next_run_at = next_time(row.cron, row.timezone, now)
        row.updated_at = now
        s.flush()
        return _schedule(row, model)


def delete_schedule(db: Database, name: str) -> None:
    with db.write() as s:
        row, _ = _row(s, name)
        s.delete(row)


def get_schedule(db: Database, name: str) -> Schedule:
    with db.read() as s:
        row, model = _row(s, name)
        return _schedule(row, model)


def list_schedules(db: Database) -> list[Schedule]:
    with db.read() as s:
        rows = s.execute(
            select(ScheduleRow, ModelRow.name)
            .join(ModelRow, ModelRow.id == ScheduleRow.model_id)
            .order_by(ScheduleRow.name)
        )
        return [_schedule(row, model) for row, model in rows]


def claim_due(db: Database, now: datetime) -> list[tuple[Schedule, datetime]]:
    """The enabled schedules due at ``now`` that this caller won (see the module
    docstring), each with the time it was due; their ``next_run_at`` has moved on."""
    won = []
    with db.read() as s:
        due = list(
            s.execute(
                select(ScheduleRow, ModelRow.name)
                .join(ModelRow, ModelRow.id == ScheduleRow.model_id)
                .where(ScheduleRow.enabled.is_(True), ScheduleRow.next_run_at <= now)
            )
        )
    for row, model in due:
        when = _utc(row.next_run_at)
        following = next_time(row.cron, row.timezone, now)
        with db.write() as s:
            result = s.execute(
                update(ScheduleRow)
                .where(ScheduleRow.id == row.id, ScheduleRow.next_run_at == row.next_run_at)
                .values(next_run_at=following, last_run_at=now)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) == 1:
                won.append((_schedule(row, model), when))
    return won


def record_run(db: Database, name: str, job_id: str | None, note: str | None) -> None:
    """Remember the run a schedule started (or why it started none)."""
    with db.write() as s:
        row = s.scalar(select(ScheduleRow).where(ScheduleRow.name == name))
        if row is None:
            return  # deleted meanwhile
        if job_id is not None:
            row.last_job_id = job_id
        row.last_note = note


def _row(s: Any, name: str) -> tuple[ScheduleRow, str]:
    found = s.execute(
        select(ScheduleRow, ModelRow.name)
        .join(ModelRow, ModelRow.id == ScheduleRow.model_id)
        .where(ScheduleRow.name == name)
    ).first()
    if found is None:
        raise NotFoundError(f"schedule {name!r} not found", param="name")
    return found[0], found[1]


def _schedule(row: ScheduleRow, model: str) -> Schedule:
    return Schedule(
        name=row.name,
        model=model,
        cron=row.cron,
        timezone=row.timezone,
        pipeline=json.loads(row.pipeline),
        enabled=row.enabled,
        next_run_at=_utc(row.next_run_at),
        last_run_at=_utc(row.last_run_at) if row.last_run_at else None,
        last_job_id=row.last_job_id,
        last_note=row.last_note,
        created_at=_utc(row.created_at),
        created_by=row.created_by,
    )


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything maas stores is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
