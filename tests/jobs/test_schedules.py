"""Schedules: checked on the way in, due times in their timezone, one run per due time
however many schedulers race for it, and no run while the previous one is active."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from maas.config import Settings
from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.jobs import schedules
from maas.jobs.runner import JobRunner
from maas.jobs.scheduler import Scheduler, run_now
from maas.registry.store import Registry

PIPELINE = {"dataset": "reviews", "gates": ["accuracy>=0.5"], "rollout": {"steps": [10, 100]}}


def body(**changes: Any) -> dict[str, Any]:
    return {"name": "nightly", "model": "clf", "cron": "0 2 * * *", "pipeline": PIPELINE, **changes}


@pytest.fixture
def clf(registry: Registry, hf_dir: Path) -> Registry:
    registry.push(hf_dir, "clf", task="text-classification")
    return registry


def test_a_schedule_is_stored_with_its_next_run_in_its_timezone(clf: Registry) -> None:
    made = schedules.create_schedule(clf.db, body(timezone="Europe/Paris"), actor="alice")
    assert made.next_run_at.tzinfo is not None and made.created_by == "alice"
    assert made.next_run_at.astimezone(schedules.ZoneInfo("Europe/Paris")).hour == 2
    assert schedules.get_schedule(clf.db, "nightly") == made
    assert [s.name for s in schedules.list_schedules(clf.db)] == ["nightly"]
    # 02:00 in Paris is 01:00 UTC in winter and 00:00 UTC in summer.
    winter = schedules.next_time("0 2 * * *", "Europe/Paris", datetime(2026, 1, 10, tzinfo=UTC))
    summer = schedules.next_time("0 2 * * *", "Europe/Paris", datetime(2026, 7, 10, tzinfo=UTC))
    assert (winter.hour, summer.hour) == (1, 0)
    with pytest.raises(ConflictError):
        schedules.create_schedule(clf.db, body())


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"cron": "every night"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"model": "nope"}, "model"),
        ({"name": "Bad Name"}, "name"),
        ({"pipeline": {"gates": ["x"]}}, "pipeline"),  # no dataset
        ({"pipeline": {**PIPELINE, "gates": ["accuracy is high"]}}, "gates"),
        ({"pipeline": {**PIPELINE, "rollout": {"steps": [50, 10]}}}, "steps"),
        ({"pipeline": {**PIPELINE, "rollout": {"candidate": 2}}}, "rollout"),
        ({"pipeline": {**PIPELINE, "epochz": 3}}, "spec"),
        ({"pipeline": {**PIPELINE, "model": "other"}}, "pipeline"),
        ({"every": "day"}, "every"),
    ],
)
def test_a_bad_schedule_is_refused_naming_its_field(
    clf: Registry, changes: dict[str, Any], param: str
) -> None:
    with pytest.raises((InvalidRequestError, NotFoundError)) as caught:
        schedules.create_schedule(clf.db, body(**changes))
    assert caught.value.param == param
    assert schedules.list_schedules(clf.db) == []


def test_pausing_and_changing_the_time_recompute_the_next_run(clf: Registry) -> None:
    schedules.create_schedule(clf.db, body())
    paused = schedules.update_schedule(clf.db, "nightly", {"enabled": False})
    assert not paused.enabled
    assert schedules.claim_due(clf.db, paused.next_run_at + timedelta(days=2)) == []
    moved = schedules.update_schedule(clf.db, "nightly", {"enabled": True, "cron": "30 4 * * *"})
    assert moved.enabled and (moved.next_run_at.hour, moved.next_run_at.minute) == (4, 30)
    with pytest.raises(InvalidRequestError):
        schedules.update_schedule(clf.db, "nightly", {"name": "other"})
    schedules.delete_schedule(clf.db, "nightly")
    with pytest.raises(NotFoundError):
        schedules.get_schedule(clf.db, "nightly")


def test_each_due_time_is_claimed_by_exactly_one_of_several_instances(
    clf: Registry, settings: Settings
) -> None:
    """Four registries on one database (four instances) claim over 30 due times at once."""
    schedules.create_schedule(clf.db, body(cron="* * * * *"))
    instances = [Registry(settings) for _ in range(4)]
    start = schedules.get_schedule(clf.db, "nightly").next_run_at
    won: list[datetime] = []
    lock = threading.Lock()
    try:
        for minute in range(30):
            now = start + timedelta(minutes=minute, seconds=1)
            barrier = threading.Barrier(len(instances))

            def claim(
                registry: Registry, at: datetime = now, gate: threading.Barrier = barrier
            ) -> None:
                gate.wait()
                for _, due in schedules.claim_due(registry.db, at):
                    with lock:
                        won.append(due)

            threads = [threading.Thread(target=claim, args=(r,)) for r in instances]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        for r in instances:
            r.close()
    assert len(won) == 30 and len(set(won)) == 30


def test_missed_runs_are_not_replayed_one_by_one(clf: Registry) -> None:
    made = schedules.create_schedule(clf.db, body(cron="* * * * *"))
    later = made.next_run_at + timedelta(hours=3, seconds=5)
    assert [due for _, due in schedules.claim_due(clf.db, later)] == [made.next_run_at]
    assert schedules.claim_due(clf.db, later) == []
    assert schedules.get_schedule(clf.db, "nightly").next_run_at > later


def test_no_run_starts_while_the_previous_one_is_still_active(
    clf: Registry, settings: Settings
) -> None:
    runner = JobRunner(clf, settings)  # never started: what it queues stays queued
    scheduler = Scheduler(runner)
    made = schedules.create_schedule(clf.db, body(cron="* * * * *"))
    [first] = scheduler.tick(made.next_run_at)
    job = runner.get(first)
    assert job.kind == "pipeline" and job.created_by == "schedule:nightly"
    assert job.spec["model"] == "clf" and job.spec["scheduled_for"] == made.next_run_at.isoformat()
    assert scheduler.tick(made.next_run_at + timedelta(minutes=1)) == []
    note = schedules.get_schedule(clf.db, "nightly").last_note
    assert note is not None and f"previous run {first} is still queued" in note
    with pytest.raises(ConflictError, match="still queued"):
        run_now(runner, schedules.get_schedule(clf.db, "nightly"), "bob")
    runner.cancel(first, actor="bob")
    runner.tick()
    assert run_now(runner, schedules.get_schedule(clf.db, "nightly"), "bob").status == "queued"
