"""JobRunner: queue jobs in the database, run each as a subprocess, follow and cancel them.

A job is a row in ``jobs`` plus a working directory ``MAAS_HOME/jobs/<id>/``.
The runner claims queued jobs oldest first (at most ``MAAS_MAX_CONCURRENT_JOBS``
running across every runner sharing the database), starts
``python -m maas.jobs.worker <workdir>`` in its own session (so a cancel can
signal the whole process group), and on each :meth:`JobRunner.tick` reaps
finished workers, forwards cancellations, copies the latest progress event
into the row and keeps a heartbeat.

Only the runner writes job rows (the worker writes files: ``events.jsonl``,
``log.txt``, ``result.json``). The rows and their transitions are in
:mod:`maas.jobs.records`; starting, signalling and reading a worker process, and the
outcome its files decide, in :mod:`maas.jobs.processes`.

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
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from maas.config import Settings
from maas.errors import InvalidRequestError, NotFoundError
from maas.jobs import records
from maas.jobs.base import (
    CANCEL_FILE,
    EVENTS_FILE,
    LOG_FILE,
    REPORT_HTML,
    REPORT_JSON,
    SPEC_FILE,
    STDERR_FILE,
    target_of,
)
from maas.jobs.processes import (
    Worker,
    is_worker_of,
    kill_group,
    outcome,
    pid_alive,
    read_events,
    start_worker,
    tail_text,
)
from maas.jobs.records import JobInfo as JobInfo  # re-exported: maas.api.jobs imports it here
from maas.jobs.records import validate_job_id
from maas.jobs.specs import validate_spec
from maas.registry.models import utcnow
from maas.registry.store import Registry

# Every orphaned job's error starts so; the rest names the runner and how it was found gone.
ORPHAN_MESSAGE = "orphaned:"
_MAX_SEED = 2**31 - 1

log = logging.getLogger("maas.jobs")


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
        self._workers: dict[str, Worker] = {}
        self._lock = threading.RLock()
        self._last_heartbeat = 0.0
        self._last_orphan_check = 0.0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._claiming = True

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

    def stop_claiming(self) -> None:
        """Start no more queued jobs (a draining server): they stay queued for another
        instance, or this one's next start. Running jobs are followed as before."""
        self._claiming = False

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
                kill_group(w.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + min(self.settings.job_cancel_grace_seconds, 5.0)
            for w in workers:
                try:
                    w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    kill_group(w.proc.pid, signal.SIGKILL)
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
        _write_spec(workdir, job_id, kind, spec, seed=seed, created_by=created_by)
        info = records.insert_job(self.db, job_id, kind, spec, seed=seed, created_by=created_by)
        self.wake()
        return info

    def get(self, job_id: str) -> JobInfo:
        return records.get_job(self.db, job_id)

    def list_jobs(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[JobInfo]:
        """Jobs, newest first."""
        return records.list_jobs(self.db, status=status, kind=kind, limit=limit)

    def cancel(self, job_id: str, *, actor: str | None = None) -> JobInfo:
        """Cancel: a queued job at once; a running one is signalled (SIGTERM, then SIGKILL)."""
        info = records.request_cancel(self.db, job_id, actor=actor)
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
        if not self._claiming:
            return
        claimed = records.claim_queued(
            self.db, limit=self.settings.max_concurrent_jobs, runner_id=self.runner_id, only=only
        )
        for job_id in claimed:
            self._spawn(job_id)

    def _spawn(self, job_id: str) -> None:
        workdir = self.workdir(job_id)
        try:
            if not (workdir / SPEC_FILE).is_file():
                # Submitted through another instance (its own MAAS_HOME): the row holds
                # everything the worker needs to know.
                info = records.get_job(self.db, job_id)
                workdir.mkdir(parents=True, exist_ok=True)
                _write_spec(
                    workdir,
                    job_id,
                    info.kind,
                    info.spec,
                    seed=info.seed,
                    created_by=info.created_by,
                )
            worker = start_worker(job_id, workdir, self.settings.child_env())
        except OSError as exc:
            self._set_final(job_id, "failed", error=f"could not start the worker: {exc}")
            return
        self._workers[job_id] = worker
        records.set_pid(self.db, job_id, worker.proc.pid)

    def _reap(self) -> None:
        for job_id, worker in list(self._workers.items()):
            if worker.proc.poll() is None:
                continue
            del self._workers[job_id]
            self._finish(worker)

    def _finish(self, worker: Worker, *, interrupted: bool = False) -> None:
        worker.output.close()
        worker.read_new_events()
        cancel_requested, cancelled_by = records.cancel_request(self.db, worker.job_id)
        status, error, result_ref = outcome(
            worker,
            cancel_requested=cancel_requested,
            cancelled_by=cancelled_by,
            interrupted=interrupted,
        )
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
        records.set_final(
            self.db, job_id, status, error=error, result_ref=result_ref, progress=progress
        )

    def _forward_cancels(self) -> None:
        if not self._workers:
            return
        for job_id in records.cancels_requested(self.db, list(self._workers)):
            self._signal_cancel(self._workers[job_id])

    def _signal_cancel(self, worker: Worker) -> None:
        if worker.proc.poll() is not None:
            return
        if worker.term_sent_at is None:
            (worker.workdir / CANCEL_FILE).touch()
            worker.term_sent_at = time.monotonic()
            kill_group(worker.proc.pid, signal.SIGTERM)
        elif (
            not worker.killed
            and time.monotonic() - worker.term_sent_at >= self.settings.job_cancel_grace_seconds
        ):
            worker.killed = True
            kill_group(worker.proc.pid, signal.SIGKILL)

    def _record_progress(self) -> None:
        for worker in self._workers.values():
            if worker.read_new_events():
                worker.progress_dirty = True
        now = time.monotonic()
        beat = now - self._last_heartbeat >= self.heartbeat_interval
        dirty = [w for w in self._workers.values() if w.progress_dirty]
        if not dirty and not (beat and self._workers):
            return
        progress = {w.job_id: w.last_event for w in dirty}
        for worker in dirty:
            worker.progress_dirty = False
        records.record_progress(self.db, progress, list(self._workers) if beat else [])
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
        rows = records.running_jobs(self.db)
        orphans: list[str] = []
        with self._lock:
            for job_id, runner, pid, heartbeat in rows:
                if job_id in self._workers:
                    continue
                host, _, runner_pid = (runner or "").rpartition(":")
                cause: str | None = None
                if host == self.host and runner_pid.isdigit():
                    owner = int(runner_pid)
                    if owner == os.getpid():
                        # Our own pid: a previous life of this process (a container's
                        # pid 1 restarted), unless another runner here still has a
                        # live worker for it.
                        if at_start and not (pid is not None and is_worker_of(pid, job_id)):
                            cause = "the server restarted"
                    elif not pid_alive(owner):
                        cause = f"its server (runner {runner}) stopped while the job ran"
                else:
                    beat = heartbeat
                    if beat is not None and beat.tzinfo is None:
                        beat = beat.replace(tzinfo=now.tzinfo)
                    if beat is None or beat < stale_before:
                        silent = (
                            "" if beat is None else f" for {(now - beat).total_seconds():.0f} s"
                        )
                        cause = (
                            f"its server (runner {runner}) sent no heartbeat{silent}; "
                            "it stopped or lost the database"
                        )
                if cause is None:
                    continue
                if pid is not None and is_worker_of(pid, job_id):
                    kill_group(pid, signal.SIGKILL)
                if records.fail_orphan(self.db, job_id, f"{ORPHAN_MESSAGE} {cause}", now):
                    orphans.append(job_id)
        return orphans


def _write_spec(
    workdir: Path,
    job_id: str,
    kind: str,
    spec: dict[str, Any],
    *,
    seed: int,
    created_by: str | None,
) -> None:
    doc = {"job_id": job_id, "kind": kind, "spec": spec, "seed": seed, "created_by": created_by}
    (workdir / SPEC_FILE).write_text(json.dumps(doc, indent=2))
