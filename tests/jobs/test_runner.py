"""The job runner with real worker subprocesses and a real SQLite registry (kind ``selftest``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maas.config import Settings
from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.jobs.processes import SHUTDOWN_MESSAGE
from maas.jobs.records import JobInfo
from maas.jobs.runner import ORPHAN_MESSAGE, JobRunner
from maas.registry.store import Registry


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, gc_grace_seconds=0, job_cancel_grace_seconds=2)


@pytest.fixture
def runner(registry: Registry, settings: Settings) -> Iterator[JobRunner]:
    jobs = JobRunner(registry, settings, poll_interval=0.05)
    yield jobs
    jobs.shutdown()


@pytest.fixture
def model_ref(registry: Registry, hf_dir: Path) -> str:
    return registry.push(hf_dir, "m", task="text-classification").ref


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its (re)parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_until_running(runner: JobRunner, job_id: str, timeout: float = 20) -> JobInfo:
    """Drive the runner until the worker has started its body (its first event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.tick()
        info = runner.get(job_id)
        if info.status == "running" and info.pid and runner.events(job_id)[0]:
            return info
        assert not info.finished, info
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not start")


def test_selftest_job_creates_a_version_with_lineage_and_reports(
    runner: JobRunner, registry: Registry, model_ref: str
) -> None:
    job = runner.submit(
        "selftest", {"model": model_ref, "metrics": {"accuracy": 0.93}}, seed=7, created_by="me"
    )
    assert job.status == "queued"
    events: list[dict[str, object]] = []
    info = runner.wait(job.id, timeout=30, on_event=events.append)
    assert info.status == "succeeded", info.error
    assert info.result_ref == "m:2"
    assert info.started_at is not None and info.finished_at is not None
    version = registry.get_version("m:2")
    assert version.parent == model_ref
    assert version.job_id == job.id
    assert version.metrics == {"selftest_files": 3, "accuracy": 0.93}
    assert version.created_by == "me"
    assert version.digest == registry.get_version(model_ref).digest  # same files, copied
    assert events and all(e["type"] == "progress" for e in events)
    assert events[-1]["step"] == events[-1]["total"]
    assert info.progress == events[-1]
    workdir = runner.workdir(job.id)
    report = json.loads(runner.report_path(job.id, html=False).read_text())
    assert report["seed"] == 7 and report["source"] == model_ref
    assert "<h1>selftest of m:1</h1>" in runner.report_path(job.id, html=True).read_text()
    assert "created m:2" in runner.log_text(job.id)
    assert not (workdir / "output").exists()  # the files live in the blob store now


def test_a_job_version_of_a_served_model_waits_for_promotion_and_a_new_model_is_served(
    runner: JobRunner, registry: Registry, model_ref: str
) -> None:
    derived = runner.wait(runner.submit("selftest", {"model": model_ref}).id, timeout=30)
    assert derived.status == "succeeded", derived.error
    assert derived.result_ref == "m:2"
    assert registry.resolve("m").version == 1  # still the version served before the job
    fresh = runner.submit("selftest", {"model": model_ref, "output": "m-copy"})
    info = runner.wait(fresh.id, timeout=30)
    assert info.result_ref == "m-copy:1"
    assert registry.get_version("m-copy:1").aliases == ["production"]


def test_evaluate_style_output_annotates_the_parent_instead_of_pushing(
    runner: JobRunner, registry: Registry, model_ref: str
) -> None:
    job = runner.submit("selftest", {"model": model_ref, "evaluate": True, "metrics": {"f1": 0.8}})
    info = runner.wait(job.id, timeout=30)
    assert info.status == "succeeded", info.error
    assert info.result_ref == model_ref
    assert registry.get_version(model_ref).metrics["f1"] == 0.8
    assert [v.version for v in registry.list_versions("m")] == [1]


def test_a_job_that_raises_fails_with_its_message(runner: JobRunner, model_ref: str) -> None:
    job = runner.submit("selftest", {"model": model_ref, "fail": "the data was bad"})
    info = runner.wait(job.id, timeout=30)
    assert info.status == "failed"
    assert info.error == "RuntimeError: the data was bad"
    assert info.result_ref is None
    assert "Traceback" in runner.log_text(job.id)


def test_cancel_stops_a_running_job_and_its_process(runner: JobRunner, model_ref: str) -> None:
    job = runner.submit("selftest", {"model": model_ref, "sleep": 60})
    running = wait_until_running(runner, job.id)
    assert running.pid is not None
    requested = runner.cancel(job.id, actor="key:ops#1")
    assert requested.cancel_requested
    info = runner.wait(job.id, timeout=10)
    assert info.status == "cancelled"
    assert info.error == "cancelled by key:ops#1"
    assert process_gone(running.pid)
    with pytest.raises(ConflictError, match="already cancelled"):
        runner.cancel(job.id)


def test_a_worker_killed_by_sigkill_fails_with_the_cause(runner: JobRunner, model_ref: str) -> None:
    job = runner.submit("selftest", {"model": model_ref, "sleep": 60})
    running = wait_until_running(runner, job.id)
    assert running.pid is not None
    os.kill(running.pid, signal.SIGKILL)
    info = runner.wait(job.id, timeout=10)
    assert info.status == "failed"
    assert info.error is not None and "worker was killed by SIGKILL" in info.error


def test_at_most_max_concurrent_jobs_run_and_the_rest_wait_in_order(
    runner: JobRunner, model_ref: str
) -> None:
    first = runner.submit("selftest", {"model": model_ref, "sleep": 1.0})
    second = runner.submit("selftest", {"model": model_ref})
    third = runner.submit("selftest", {"model": model_ref})
    runner.cancel(third.id)  # a queued job is cancelled at once, never started
    wait_until_running(runner, first.id)
    for _ in range(5):
        runner.tick()
        assert runner.get(second.id).status == "queued"
    done_first = runner.wait(first.id, timeout=30)
    done_second = runner.wait(second.id, timeout=30)
    assert done_first.status == done_second.status == "succeeded"
    assert done_first.finished_at is not None and done_second.started_at is not None
    assert done_second.started_at >= done_first.finished_at
    cancelled = runner.get(third.id)
    assert cancelled.status == "cancelled" and cancelled.started_at is None
    assert [j.id for j in runner.list_jobs(status="succeeded")] == [second.id, first.id]


def test_jobs_left_running_by_a_crashed_server_are_marked_orphaned_at_start(
    registry: Registry, settings: Settings, model_ref: str, tmp_path: Path
) -> None:
    # A real "server" process starts a job, then dies without any cleanup.
    script = textwrap.dedent(
        """
        import os, sys, time
        from maas.config import Settings
        from maas.jobs.runner import JobRunner
        from maas.registry.store import Registry
        settings = Settings(home=sys.argv[1])
        runner = JobRunner(Registry(settings), settings, poll_interval=0.05)
        job = runner.submit("selftest", {"model": sys.argv[2], "sleep": 60})
        while True:
            runner.tick()
            info = runner.get(job.id)
            if info.pid and runner.events(job.id)[0]:
                print(job.id, info.pid, flush=True)
                os._exit(0)
            time.sleep(0.05)
        """
    )
    crashed = subprocess.run(
        [sys.executable, "-c", script, str(settings.home), model_ref],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id, pid = crashed.stdout.split()
    assert registry_status(registry, settings, job_id) == "running"
    assert not process_gone(int(pid))  # the worker outlived its server

    async def restart() -> list[str]:
        runner = JobRunner(registry, settings, poll_interval=0.05)
        await runner.start()
        await runner.close()
        return [job_id]

    asyncio.run(restart())
    info = JobRunner(registry, settings).get(job_id)
    assert info.status == "failed"
    assert info.error is not None and info.error.startswith(ORPHAN_MESSAGE)
    assert "stopped while the job ran" in info.error
    deadline = time.monotonic() + 5
    while not process_gone(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(int(pid))  # and the stray worker was stopped


def registry_status(registry: Registry, settings: Settings, job_id: str) -> str:
    return JobRunner(registry, settings).get(job_id).status


def test_async_runner_runs_jobs_in_the_background_and_close_stops_running_ones(
    registry: Registry, settings: Settings, model_ref: str
) -> None:
    async def scenario() -> tuple[JobInfo, JobInfo]:
        runner = JobRunner(registry, settings, poll_interval=0.05)
        await runner.start()
        quick = await asyncio.to_thread(runner.submit, "selftest", {"model": model_ref})
        state = await asyncio.to_thread(runner.get, quick.id)
        while not state.finished:
            await asyncio.sleep(0.05)
            state = await asyncio.to_thread(runner.get, quick.id)
        spec = {"model": model_ref, "sleep": 60}
        slow = await asyncio.to_thread(runner.submit, "selftest", spec)
        events: list[dict[str, object]] = []
        while not events:
            await asyncio.sleep(0.05)
            events = (await asyncio.to_thread(runner.events, slow.id))[0]
        await runner.close()
        return runner.get(quick.id), runner.get(slow.id)

    quick, slow = asyncio.run(scenario())
    assert quick.status == "succeeded"
    assert slow.status == "failed" and slow.error == SHUTDOWN_MESSAGE
    assert slow.pid is not None and process_gone(slow.pid)


def test_unknown_kinds_ids_and_states_are_refused(runner: JobRunner) -> None:
    with pytest.raises(InvalidRequestError, match="unknown job kind 'bake'"):
        runner.submit("bake", {})
    with pytest.raises(InvalidRequestError, match="seed"):
        runner.submit("selftest", {}, seed=-1)
    with pytest.raises(NotFoundError):
        runner.get("0" * 32)
    with pytest.raises(NotFoundError):
        runner.get("../../etc")
    with pytest.raises(InvalidRequestError, match="unknown status"):
        runner.list_jobs(status="done")


def test_a_missing_input_version_fails_the_job_clearly(runner: JobRunner) -> None:
    job = runner.submit("selftest", {"model": "nowhere:1"})
    info = runner.wait(job.id, timeout=30)
    assert info.status == "failed"
    assert info.error == "model 'nowhere' not found"
