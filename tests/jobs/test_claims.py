"""Claiming queued jobs when several runners (instances) share one database."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from maas.config import Settings
from maas.jobs import records
from maas.registry.store import Registry
from tests.pg import fresh_postgres_url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        yield from fresh_postgres_url()


@pytest.fixture
def two_instances(database_url: str, tmp_path: Path) -> Iterator[tuple[Registry, Registry]]:
    # One Registry (engine and pool) each, as in separate instances.
    a = Registry(Settings(home=tmp_path / "a", database_url=database_url))
    b = Registry(Settings(home=tmp_path / "b", database_url=database_url))
    yield a, b
    a.close()
    b.close()


def test_a_runner_claiming_while_another_is_mid_claim_takes_none_of_its_jobs(
    two_instances: tuple[Registry, Registry],
) -> None:
    a, b = two_instances
    for _ in range(8):
        records.insert_job(a.db, uuid.uuid4().hex, "selftest", {}, seed=0, created_by=None)
    # Pause A's claim right after it picked its jobs (the SELECT of its write
    # transaction), and let B claim meanwhile: B must wait for A, then see A's claims.
    a_picked, b_finished = threading.Event(), threading.Event()

    def pause_after_pick(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "ORDER BY jobs.created_at" in statement and not a_picked.is_set():
            a_picked.set()
            b_finished.wait(timeout=1.0)  # B is blocked, as it should be: go on after 1 s

    event.listen(a.db.engine, "after_cursor_execute", pause_after_pick)
    with ThreadPoolExecutor(2) as pool:
        claim_a = pool.submit(records.claim_queued, a.db, limit=5, runner_id="a", only=None)
        assert a_picked.wait(timeout=10)
        claim_b = pool.submit(records.claim_queued, b.db, limit=5, runner_id="b", only=None)
        claim_b.add_done_callback(lambda _f: b_finished.set())
        claimed_a, claimed_b = claim_a.result(timeout=30), claim_b.result(timeout=30)
    assert len(claimed_a) == 5
    assert claimed_b == []  # the limit of 5 running holds across both, and no job twice
    running = records.list_jobs(a.db, status="running", limit=100)
    assert {j.id for j in running} == set(claimed_a)


def test_eight_runners_claiming_at_once_claim_each_job_once_within_the_limit(
    database_url: str, tmp_path: Path
) -> None:
    registries = [
        Registry(Settings(home=tmp_path / f"home{i}", database_url=database_url)) for i in range(8)
    ]
    try:
        for _ in range(40):
            records.insert_job(
                registries[0].db, uuid.uuid4().hex, "selftest", {}, seed=0, created_by=None
            )
        start = threading.Barrier(8)

        def claim(index: int) -> list[str]:
            start.wait()
            claimed: list[str] = []
            for _ in range(10):
                claimed += records.claim_queued(
                    registries[index].db, limit=25, runner_id=f"runner-{index}", only=None
                )
            return claimed

        with ThreadPoolExecutor(8) as pool:
            claims = list(pool.map(claim, range(8)))
        everything = [job_id for claimed in claims for job_id in claimed]
        assert len(everything) == len(set(everything)) == 25
        running = records.list_jobs(registries[0].db, status="running", limit=100)
        assert {j.id for j in running} == set(everything)
    finally:
        for registry in registries:
            registry.close()
