"""JobRunner: queue jobs in the database, run each as a subprocess, follow and cancel them.

A job is a row in ``jobs`` plus a working directory ``MAAS_HOME/jobs/<id>/``.
The runner claims queued jobs oldest first (at most ``MAAS_MAX_CONCURRENT_JOBS``
running across every runner sharing the database), starts
``python -m maas.jobs.worker <workdir>`` in its own session (so a cancel can
signal the whole process group), and on each :meth:`JobRunner.tick` reaps
finished workers, forwards cancellations, copies the latest progress event
into the row and keeps a heartbeat.

Only the runner writes job rows (the worker writes files: ``events.jsonl``,
``log.txt``, ``result.json``), so the outcome is decided in one place:

* ``result.json`` says succeeded -> succeeded (even if a cancel came too late);
* a cancel was requested -> cancelled;
* ``result.json`` says failed -> failed with the job's message;
* otherwise the worker crashed -> failed with its exit cause and last output.

The server drives :meth:`tick` from an asyncio task (:meth:`start` /
:meth:`close`, the work itself in a thread); the CLI drives it synchronously
with :meth:`wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, update

from maas.config import Settings
from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.jobs.base import (
    CANCEL_FILE,
    EVENTS_FILE,
    LOG_FILE,
    REPORT_HTML,
    REPORT_JSON,
    RESULT_FILE,
    SPEC_FILE,
    STDERR_FILE,
    target_of,
)
from maas.jobs.specs import validate_spec
from maas.registry.models import JobRow, utcnow
from maas.registry.schemas import UtcDatetime
from maas.registry.store import Registry

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ORPHAN_MESSAGE = "orphaned: the server restarted"
SHUTDOWN_MESSAGE = "interrupted: the server shut down while the job ran"
_JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_MAX_SEED = 2**31 - 1
_TAIL_LINES = 8

log = logging.getLogger("maas.jobs")


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


def _info(row: JobRow) -> JobInfo:
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker was killed by {name}"
    return f"worker exited with code {returncode}"


def tail_text(path: Path, lines: int = _TAIL_LINES, max_bytes: int = 16384) -> str:
    """The last non-empty lines of a text file ('' when absent)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    kept = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of ``path`` after byte ``offset``, and the offset after them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset  # a line still being written
    events: list[dict[str, Any]] = []
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a body that wrote garbage: skip the line, keep following
        if isinstance(event, dict):
            events.append(event)
    return events, offset + end + 1


def _kill_group(pid: int, sig: signal.Signals) -> None:
    # The worker leads its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _is_worker_of(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is still the worker of ``job_id`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"maas.jobs.worker" in cmdline and job_id.encode() in cmdline


@dataclass
class _Worker:
    job_id: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    output: IO[bytes]
    events_offset: int = 0
    last_event: dict[str, Any] | None = None
    progress_dirty: bool = False
    term_sent_at: float | None = None
    killed: bool = False


class JobRunner:
    """Queue, start, follow and cancel job subprocesses for one registry."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        *,
        poll_interval: float = 0.25,
        heartbeat_interval: float = 5.0,
        stale_after: float = 60.0,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.db = registry.db
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.host = socket.gethostname()
        self.runner_id = f"{self.host}:{os.getpid()}"
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.RLock()
        self._last_heartbeat = 0.0
        self._last_orphan_check = 0.0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Mark leftovers of a previous process as orphaned and start following jobs."""
        await asyncio.to_thread(self.recover_orphans, at_start=True)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="maas-job-runner")

    async def close(self) -> None:
        """Stop following; workers still running are stopped and marked failed."""
        self._stopping = True
        if self._task is not None:
            self.wake()
            await self._task
            self._task = None
        await asyncio.to_thread(self.shutdown)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a bad tick must not end the runner; the next one retries
                log.exception("job runner tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    def wake(self) -> None:
        """Make the background loop tick now (safe from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def shutdown(self) -> None:
        """Synchronously stop this runner's workers (SIGTERM, then SIGKILL) and fail their jobs."""
        with self._lock:
            workers = list(self._workers.values())
            for w in workers:
                _kill_group(w.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + min(self.settings.job_cancel_grace_seconds, 5.0)
            for w in workers:
                try:
                    w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill_group(w.proc.pid, signal.SIGKILL)
                    w.proc.wait()
            for w in workers:
                self._finish(w, interrupted=True)
            self._workers.clear()

    # ------------------------------------------------------------- queueing

    def submit(
        self,
        kind: str,
        spec: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        created_by: str | None = None,
    ) -> JobInfo:
        """Queue a job; it starts when a slot is free (FIFO)."""
        target_of(kind)  # refuses unknown kinds
        spec = dict(spec or {})
        if not 0 <= seed <= _MAX_SEED:
            raise InvalidRequestError(f"seed must be between 0 and {_MAX_SEED}", param="seed")
        try:
            json.dumps(spec)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"spec must be JSON: {exc}", param="spec") from exc
        validate_spec(kind, spec)  # an unknown key fails now, not after a silent default
        job_id = uuid.uuid4().hex
        workdir = self.workdir(job_id)
        workdir.mkdir(parents=True)
        doc = {
            "job_id": job_id,
            "kind": kind,
            "spec": spec,
            "seed": seed,
            "created_by": created_by,
        }
        (workdir / SPEC_FILE).write_text(json.dumps(doc, indent=2))
        with self.db.write() as s:
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
            info = _info(row)
        self.wake()
        return info

    def get(self, job_id: str) -> JobInfo:
        validate_job_id(job_id)
        with self.db.read() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFoundError(f"job {job_id!r} not found", param="job_id")
            return _info(row)

    def list_jobs(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 100
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
        with self.db.read() as s:
            return [_info(row) for row in s.scalars(query)]

    def cancel(self, job_id: str, *, actor: str | None = None) -> JobInfo:
        """Cancel: a queued job at once; a running one is signalled (SIGTERM, then SIGKILL)."""
        validate_job_id(job_id)
        now = utcnow()
        with self.db.write() as s:
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
            info = _info(row)
        if info.status == "running":
            # The worker sees this file through ctx.cancelled(), even before the signal.
            (self.workdir(job_id) / CANCEL_FILE).touch()
            with self._lock:
                worker = self._workers.get(job_id)
                if worker is not None:
                    self._signal_cancel(worker)
        self.wake()
        return info

    # ------------------------------------------------------------- reading

    def workdir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / validate_job_id(job_id)

    def events(self, job_id: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        return read_events(self.workdir(job_id) / EVENTS_FILE, offset)

    def log_text(self, job_id: str) -> str:
        """The job's log, then the worker's own stderr when it wrote any."""
        self.get(job_id)
        workdir = self.workdir(job_id)
        try:
            text = (workdir / LOG_FILE).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        stderr = tail_text(workdir / STDERR_FILE, lines=200, max_bytes=65536)
        if stderr:
            text += "--- worker stderr (last lines) ---\n" + stderr + "\n"
        return text

    def report_path(self, job_id: str, *, html: bool) -> Path:
        info = self.get(job_id)
        path = self.workdir(job_id) / (REPORT_HTML if html else REPORT_JSON)
        if not path.is_file():
            what = "an HTML report" if html else "a report"
            raise NotFoundError(f"job {job_id} ({info.status}) has no {what}", param="job_id")
        return path

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        drive: bool = True,
    ) -> JobInfo:
        """Block until the job ends; ``drive`` runs it from this process (CLI local mode).

        Driving claims only this job (respecting the concurrency limit), so a
        short-lived CLI never adopts other queued jobs it would then orphan.
        ``on_event`` gets every event of ``events.jsonl`` in order.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        offset = 0
        while True:
            if drive:
                self.tick(only=job_id)
            info = self.get(job_id)
            events, offset = self.events(job_id, offset)
            if on_event is not None:
                for event in events:
                    on_event(event)
            if info.finished:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info.status} after {timeout} s")
            time.sleep(self.poll_interval)

    # ---------------------------------------------------------- scheduling

    def tick(self, *, only: str | None = None) -> None:
        """One round: reap, forward cancels, record progress, start queued jobs."""
        with self._lock:
            self._reap()
            self._forward_cancels()
            self._record_progress()
            now = time.monotonic()
            if now - self._last_orphan_check >= self.heartbeat_interval * 2:
                self._last_orphan_check = now
                self.recover_orphans(at_start=False)
            self._start_queued(only)

    def _start_queued(self, only: str | None) -> None:
        limit = self.settings.max_concurrent_jobs
        # A cheap read first: an idle server must not take the write lock every tick.
        with self.db.read() as s:
            running = s.scalar(select(func.count()).where(JobRow.status == "running")) or 0
            queued = select(JobRow.id).where(JobRow.status == "queued")
            if only is not None:
                queued = queued.where(JobRow.id == only)
            if running >= limit or s.scalar(queued.limit(1)) is None:
                return
        claimed: list[str] = []
        now = utcnow()
        with self.db.write() as s:  # serialised: two runners never claim the same slot
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
                row.runner = self.runner_id
                row.heartbeat_at = now
                claimed.append(row.id)
        for job_id in claimed:
            self._spawn(job_id)

    def _spawn(self, job_id: str) -> None:
        workdir = self.workdir(job_id)
        output = (workdir / STDERR_FILE).open("ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "maas.jobs.worker", str(workdir)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                cwd=workdir,
                env=self.settings.child_env(),
                start_new_session=True,
            )
        except OSError as exc:
            output.close()
            self._set_final(job_id, "failed", error=f"could not start the worker: {exc}")
            return
        self._workers[job_id] = _Worker(job_id, proc, workdir, output)
        with self.db.write() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(pid=proc.pid))

    def _reap(self) -> None:
        for job_id, worker in list(self._workers.items()):
            if worker.proc.poll() is None:
                continue
            del self._workers[job_id]
            self._finish(worker)

    def _finish(self, worker: _Worker, *, interrupted: bool = False) -> None:
        worker.output.close()
        events, worker.events_offset = read_events(
            worker.workdir / EVENTS_FILE, worker.events_offset
        )
        if events:
            worker.last_event = events[-1]
        returncode = worker.proc.returncode
        result = _read_result(worker.workdir / RESULT_FILE)
        with self.db.read() as s:
            row = s.get(JobRow, worker.job_id)
            cancel_requested = row is not None and row.cancel_requested_at is not None
            cancelled_by = row.cancelled_by if row is not None else None
        status, error, result_ref = "failed", None, None
        if result.get("status") == "succeeded":
            status, result_ref = "succeeded", result.get("result_ref")
        elif cancel_requested:
            status = "cancelled"
            error = f"cancelled by {cancelled_by}" if cancelled_by else "cancelled"
        elif interrupted:
            error = SHUTDOWN_MESSAGE
        elif result.get("status") == "cancelled":
            status, error = "cancelled", "cancelled"
        elif result.get("status") == "failed":
            error = str(result.get("error") or "the job failed")
        else:
            error = describe_exit(returncode)
            if returncode == 0:
                error = "worker exited without writing a result"
            last = tail_text(worker.workdir / STDERR_FILE) or tail_text(worker.workdir / LOG_FILE)
            if last:
                error += f"; last output:\n{last}"
        self._set_final(
            worker.job_id, status, error=error, result_ref=result_ref, progress=worker.last_event
        )

    def _set_final(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        result_ref: str | None = None,
        progress: dict[str, Any] | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "status": status,
            "finished_at": utcnow(),
            "error": error,
            "result_ref": result_ref,
        }
        if progress is not None:
            values["progress"] = progress
        with self.db.write() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == "running")
                .values(**values)
            )

    def _forward_cancels(self) -> None:
        if not self._workers:
            return
        with self.db.read() as s:
            requested = set(
                s.scalars(
                    select(JobRow.id).where(
                        JobRow.id.in_(list(self._workers)),
                        JobRow.cancel_requested_at.is_not(None),
                    )
                )
            )
        for job_id in requested:
            self._signal_cancel(self._workers[job_id])

    def _signal_cancel(self, worker: _Worker) -> None:
        if worker.proc.poll() is not None:
            return
        if worker.term_sent_at is None:
            (worker.workdir / CANCEL_FILE).touch()
            worker.term_sent_at = time.monotonic()
            _kill_group(worker.proc.pid, signal.SIGTERM)
        elif (
            not worker.killed
            and time.monotonic() - worker.term_sent_at >= self.settings.job_cancel_grace_seconds
        ):
            worker.killed = True
            _kill_group(worker.proc.pid, signal.SIGKILL)

    def _record_progress(self) -> None:
        for worker in self._workers.values():
            events, worker.events_offset = read_events(
                worker.workdir / EVENTS_FILE, worker.events_offset
            )
            if events:
                worker.last_event = events[-1]
                worker.progress_dirty = True
        now = time.monotonic()
        beat = now - self._last_heartbeat >= self.heartbeat_interval
        dirty = [w for w in self._workers.values() if w.progress_dirty]
        if not dirty and not (beat and self._workers):
            return
        stamp = utcnow()
        with self.db.write() as s:
            for worker in dirty:
                s.execute(
                    update(JobRow)
                    .where(JobRow.id == worker.job_id)
                    .values(progress=worker.last_event, heartbeat_at=stamp)
                )
                worker.progress_dirty = False
            if beat and self._workers:
                s.execute(
                    update(JobRow)
                    .where(JobRow.id.in_(list(self._workers)), JobRow.status == "running")
                    .values(heartbeat_at=stamp)
                )
        if beat:
            self._last_heartbeat = now

    # -------------------------------------------------------------- orphans

    def recover_orphans(self, *, at_start: bool = False) -> list[str]:
        """Fail running jobs no live runner follows; kill their workers if still alive.

        A job is orphaned when its runner ran on this host and that process is
        gone (or, at start, had this very pid, as a restarted container's pid 1
        does, and its worker is gone), or when its heartbeat is older than
        ``stale_after`` (runners on other hosts).
        """
        now = utcnow()
        stale_before = now - timedelta(seconds=self.stale_after)
        with self.db.read() as s:
            rows = [
                (row.id, row.runner, row.pid, row.heartbeat_at)
                for row in s.scalars(select(JobRow).where(JobRow.status == "running"))
            ]
        orphans: list[str] = []
        with self._lock:
            for job_id, runner, pid, heartbeat in rows:
                if job_id in self._workers:
                    continue
                host, _, runner_pid = (runner or "").rpartition(":")
                if host == self.host and runner_pid.isdigit():
                    owner = int(runner_pid)
                    if owner == os.getpid():
                        # Our own pid: a previous life of this process (a container's
                        # pid 1 restarted), unless another runner here still has a
                        # live worker for it.
                        gone = at_start and not (pid is not None and _is_worker_of(pid, job_id))
                    else:
                        gone = not pid_alive(owner)
                else:
                    beat = heartbeat
                    if beat is not None and beat.tzinfo is None:
                        beat = beat.replace(tzinfo=now.tzinfo)
                    gone = beat is None or beat < stale_before
                if not gone:
                    continue
                if pid is not None and _is_worker_of(pid, job_id):
                    _kill_group(pid, signal.SIGKILL)
                with self.db.write() as s:
                    done = s.execute(
                        update(JobRow)
                        .where(JobRow.id == job_id, JobRow.status == "running")
                        .values(status="failed", finished_at=now, error=ORPHAN_MESSAGE)
                    )
                if done.rowcount:  # type: ignore[attr-defined]
                    orphans.append(job_id)
        return orphans


def _read_result(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
