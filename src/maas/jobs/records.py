"""The ``jobs`` table: :class:`JobInfo`, and each change of a job's row.

A job moves ``queued -> running -> succeeded | failed | cancelled``. Only the runner
(:mod:`maas.jobs.runner`) calls the writers here (a worker writes files, never rows), so
every transition is decided in one place, each in one short transaction.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.registry.db import Database
from maas.registry.models import JobRow, utcnow
from maas.registry.schemas import UtcDatetime

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# Key of the PostgreSQL advisory lock that serialises claims ("maas-job" in ASCII);
# distinct from the audit chain's and the migrations' locks.
PG_CLAIM_LOCK = 0x6D6161732D6A6F62


class JobInfo(BaseModel):
    """A job as the API and CLI show it."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    status: str
    spec: dict[str, Any]
    seed: int
    created_by: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    error: str | None
    pid: int | None
    result_ref: str | None
    progress: dict[str, Any] | None
    cancel_requested: bool

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def job_info(row: JobRow) -> JobInfo:
    return JobInfo(
        id=row.id,
        kind=row.kind,
        status=row.status,
        spec=row.spec,
        seed=row.seed,
        created_by=row.created_by,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
        pid=row.pid,
        result_ref=row.result_ref,
        progress=row.progress,
        cancel_requested=row.cancel_requested_at is not None,
    )


def validate_job_id(job_id: str) -> str:
    # Ids name directories: anything but 32 hex digits cannot be a job.
    if not _JOB_ID_RE.fullmatch(job_id):
        raise NotFoundError(f"job {job_id!r} not found", param="job_id")
    return job_id


def insert_job(
    db: Database,
    job_id: str,
    kind: str,
    spec: dict[str, Any],
    *,
    seed: int,
    created_by: str | None,
) -> JobInfo:
    """Add a queued job."""
    with db.write() as s:
        row = JobRow(
            id=job_id,
            kind=kind,
            status="queued",
            spec=spec,
            seed=seed,
            created_by=created_by,
            created_at=utcnow(),
        )
        s.add(row)
        s.flush()
        return job_info(row)


def get_job(db: Database, job_id: str) -> JobInfo:
    validate_job_id(job_id)
    with db.read() as s:
        row = s.get(JobRow, job_id)
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found", param="job_id")
        return job_info(row)


def list_jobs(
    db: Database, *, status: str | None = None, kind: str | None = None, limit: int = 100
) -> list[JobInfo]:
    """Jobs, newest first."""
    if status is not None and status not in JOB_STATUSES:
        raise InvalidRequestError(
            f"unknown status {status!r}; expected one of: {', '.join(JOB_STATUSES)}",
            param="status",
        )
    query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id).limit(limit)
    if status is not None:
        query = query.where(JobRow.status == status)
    if kind is not None:
        query = query.where(JobRow.kind == kind)
    with db.read() as s:
        return [job_info(row) for row in s.scalars(query)]


def request_cancel(db: Database, job_id: str, *, actor: str | None) -> JobInfo:
    """Cancel a queued job at once; mark a running one for its runner to signal."""
    validate_job_id(job_id)
    now = utcnow()
    with db.write() as s:
        row = s.get(JobRow, job_id)
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found", param="job_id")
        if row.status in TERMINAL:
            raise ConflictError(f"job {job_id} already {row.status}", param="job_id")
        by = f" by {actor}" if actor else ""
        if row.status == "queued":
            row.status = "cancelled"
            row.finished_at = now
            row.error = f"cancelled{by} before it started"
        elif row.cancel_requested_at is None:
            row.cancel_requested_at = now
        row.cancelled_by = actor
        return job_info(row)


def claim_queued(db: Database, *, limit: int, runner_id: str, only: str | None) -> list[str]:
    """Mark the oldest queued jobs running for ``runner_id``, up to ``limit`` running in all."""
    # A cheap read first: an idle server must not take the write lock every tick.
    with db.read() as s:
        running = s.scalar(select(func.count()).where(JobRow.status == "running")) or 0
        queued = select(JobRow.id).where(JobRow.status == "queued")
        if only is not None:
            queued = queued.where(JobRow.id == only)
        if running >= limit or s.scalar(queued.limit(1)) is None:
            return []
    claimed: list[str] = []
    now = utcnow()
    with db.write() as s:  # serialised: two runners never claim the same slot
        _lock_claims(s)
        running = s.scalar(select(func.count()).where(JobRow.status == "running")) or 0
        query = (
            select(JobRow)
            .where(JobRow.status == "queued")
            .order_by(JobRow.created_at, JobRow.id)
            .limit(max(0, limit - running))
        )
        if only is not None:
            query = query.where(JobRow.id == only)
        for row in s.scalars(query):
            row.status = "running"
            row.started_at = now
            row.runner = runner_id
            row.heartbeat_at = now
            claimed.append(row.id)
    return claimed


def _lock_claims(session: Session) -> None:
    """Serialise claims across every runner sharing the database, until commit.

    SQLite's ``BEGIN IMMEDIATE`` (``Database.write``) already holds the one write
    lock. PostgreSQL's default READ COMMITTED does not: two instances' runners
    would both count the running jobs, both pick the oldest queued one and both
    start it. A transaction-level advisory lock makes the count, the pick and the
    update one step; the statements after it see the other runner's committed claim.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_CLAIM_LOCK})


def set_pid(db: Database, job_id: str, pid: int) -> None:
    with db.write() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(pid=pid))


def cancel_request(db: Database, job_id: str) -> tuple[bool, str | None]:
    """Whether a cancel of ``job_id`` was requested, and by whom."""
    with db.read() as s:
        row = s.get(JobRow, job_id)
        cancel_requested = row is not None and row.cancel_requested_at is not None
        cancelled_by = row.cancelled_by if row is not None else None
    return cancel_requested, cancelled_by


def cancels_requested(db: Database, job_ids: list[str]) -> set[str]:
    """Those of ``job_ids`` whose cancel was requested."""
    with db.read() as s:
        return set(
            s.scalars(
                select(JobRow.id).where(
                    JobRow.id.in_(job_ids),
                    JobRow.cancel_requested_at.is_not(None),
                )
            )
        )


def set_final(
    db: Database,
    job_id: str,
    status: str,
    *,
    error: str | None = None,
    result_ref: str | None = None,
    progress: dict[str, Any] | None = None,
) -> None:
    """End a running job (a job no longer running is left as it is)."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "error": error,
        "result_ref": result_ref,
    }
    if progress is not None:
        values["progress"] = progress
    with db.write() as s:
        s.execute(
            update(JobRow).where(JobRow.id == job_id, JobRow.status == "running").values(**values)
        )


def record_progress(
    db: Database, progress: dict[str, dict[str, Any] | None], alive: list[str]
) -> None:
    """Store each job's latest progress event with a heartbeat, and a heartbeat for every
    running job of ``alive``, in one transaction."""
    stamp = utcnow()
    with db.write() as s:
        for job_id, event in progress.items():
            s.execute(
                update(JobRow).where(JobRow.id == job_id).values(progress=event, heartbeat_at=stamp)
            )
        if alive:
            s.execute(
                update(JobRow)
                .where(JobRow.id.in_(alive), JobRow.status == "running")
                .values(heartbeat_at=stamp)
            )


def running_jobs(db: Database) -> list[tuple[str, str | None, int | None, datetime | None]]:
    """(id, runner, pid, heartbeat) of every running job."""
    with db.read() as s:
        return [
            (row.id, row.runner, row.pid, row.heartbeat_at)
            for row in s.scalars(select(JobRow).where(JobRow.status == "running"))
        ]


def fail_orphan(db: Database, job_id: str, message: str, now: datetime) -> bool:
    """Fail ``job_id`` if it is still running; whether it was."""
    with db.write() as s:
        done = s.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.status == "running")
            .values(status="failed", finished_at=now, error=message)
        )
    return bool(done.rowcount)  # type: ignore[attr-defined]
