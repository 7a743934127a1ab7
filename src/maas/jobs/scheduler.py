"""Scheduler: starts the pipeline runs of due schedules, once across instances.

Every ``interval`` seconds it claims the schedules that are due
(``schedules.claim_due``: a compare-and-set, so of several instances exactly one
wins each due time) and queues a ``pipeline`` job for each through the job
runner, where it is visible, followable and cancellable like any job, created by
``schedule:<name>``. A schedule whose previous run is still queued or running
starts none (the skipped time is noted on it). It runs wherever the job runner
runs: in a one-process server, and in the supervisor of ``--workers N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from maas.errors import ConflictError, NotFoundError
from maas.jobs import records
from maas.jobs.records import JobInfo
from maas.jobs.runner import JobRunner
from maas.jobs.schedules import PIPELINE_KIND, Schedule, claim_due, record_run
from maas.registry.models import utcnow

log = logging.getLogger("maas.jobs")

_ACTIVE = ("queued", "running")


class Scheduler:
    def __init__(self, runner: JobRunner, *, interval: float = 1.0) -> None:
        self.runner = runner
        self.db = runner.db
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="maas-scheduler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a bad tick must not end the loop; the next one retries
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.interval)

    def tick(self, now: datetime | None = None) -> list[str]:
        """Start the runs due at ``now``; the ids of the jobs this call queued."""
        started = []
        for schedule, due in claim_due(self.db, now or utcnow()):
            previous = self._previous(schedule.last_job_id)
            if previous is not None and previous.status in _ACTIVE:
                note = (
                    f"run due {due.isoformat()} skipped: the previous run "
                    f"{previous.id} is still {previous.status}"
                )
                log.info("schedule %s: %s", schedule.name, note)
                record_run(self.db, schedule.name, None, note)
                continue
            try:
                job = self.runner.submit(
                    PIPELINE_KIND,
                    schedule.job_spec(due),
                    created_by=f"schedule:{schedule.name}",
                )
            except Exception as exc:  # a spec the registry no longer accepts
                log.exception("schedule %s could not start its run", schedule.name)
                record_run(self.db, schedule.name, None, f"run due {due.isoformat()}: {exc}")
                continue
            log.info("schedule %s started job %s (due %s)", schedule.name, job.id, due)
            record_run(self.db, schedule.name, job.id, None)
            started.append(job.id)
        return started

    def _previous(self, job_id: str | None) -> JobInfo | None:
        if job_id is None:
            return None
        try:
            return records.get_job(self.db, job_id)
        except NotFoundError:  # its record was removed
            return None


def schedule_runs(runner: JobRunner, schedule: Schedule, limit: int = 10) -> list[JobInfo]:
    """The schedule's latest runs (pipeline jobs), newest first."""
    jobs = runner.list_jobs(kind=PIPELINE_KIND, limit=500)
    return [j for j in jobs if j.spec.get("schedule") == schedule.name][:limit]


def run_now(runner: JobRunner, schedule: Schedule, actor: str | None) -> JobInfo:
    """Start a run outside the cron times (409 while the previous run is active)."""
    active = [j for j in schedule_runs(runner, schedule) if j.status in _ACTIVE]
    if active:
        raise ConflictError(
            f"schedule {schedule.name!r} has run {active[0].id} still {active[0].status}",
            param="schedule",
        )
    job = runner.submit(PIPELINE_KIND, schedule.job_spec(utcnow()), created_by=actor)
    record_run(runner.db, schedule.name, job.id, None)
    return job
