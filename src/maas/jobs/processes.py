"""Worker processes as the runner sees them: starting one, signalling its process group,
telling whether it is alive, reading the files it writes, and the outcome they decide.

The outcome (:func:`outcome`) is decided in one place:

* ``result.json`` says succeeded -> succeeded (even if a cancel came too late);
* a cancel was requested -> cancelled;
* ``result.json`` says failed -> failed with the job's message;
* otherwise the worker crashed -> failed with its exit cause and last output.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from maas.jobs.base import EVENTS_FILE, LOG_FILE, RESULT_FILE, STDERR_FILE

SHUTDOWN_MESSAGE = "interrupted: the server shut down while the job ran"
_TAIL_LINES = 8


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


def kill_group(pid: int, sig: signal.Signals) -> None:
    # The worker leads its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def is_worker_of(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is still the worker of ``job_id`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"maas.jobs.worker" in cmdline and job_id.encode() in cmdline


@dataclass
class Worker:
    """One running worker subprocess and how far the runner has read its events."""

    job_id: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    output: IO[bytes]
    events_offset: int = 0
    last_event: dict[str, Any] | None = None
    progress_dirty: bool = False
    term_sent_at: float | None = None
    killed: bool = False

    def read_new_events(self) -> bool:
        """Read past the events written since the last call; whether there were any."""
        events, self.events_offset = read_events(self.workdir / EVENTS_FILE, self.events_offset)
        if events:
            self.last_event = events[-1]
        return bool(events)


def start_worker(job_id: str, workdir: Path, env: dict[str, str]) -> Worker:
    """Start ``python -m maas.jobs.worker <workdir>`` in its own session (so a cancel can
    signal the whole process group); its stdout and stderr go to the stderr file."""
    output = (workdir / STDERR_FILE).open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maas.jobs.worker", str(workdir)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    except OSError:
        output.close()
        raise
    return Worker(job_id, proc, workdir, output)


def outcome(
    worker: Worker, *, cancel_requested: bool, cancelled_by: str | None, interrupted: bool
) -> tuple[str, str | None, str | None]:
    """(status, error, result_ref) of a worker that has exited."""
    returncode = worker.proc.returncode
    result = read_result(worker.workdir / RESULT_FILE)
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
    return status, error, result_ref


def read_result(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
