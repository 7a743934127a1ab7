"""Two `maas serve` instances on one Postgres, one Redis and one artifact store act as one service.

Instance A is one process; instance B is a supervisor with two HTTP workers and an
engine. Each has its own MAAS_HOME (as on two machines); they share the database
(a throwaway PostgreSQL database), Redis (a namespace of this module) and a
`file://` artifact store. Requests alternate between them.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from maas.registry.models import JobRow
from maas.registry.store import Registry
from tests.e2e.instances import V1_Y, V2_Y, Instance, Pair, X, two_instances
from tests.security.test_quotas_redis import REDIS_URL, redis_reachable

pytestmark = pytest.mark.slow
__all__ = ["redis_reachable"]  # its autouse fixture skips (fails under CI) without Redis


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with two_instances(
        tmp_path_factory.mktemp("scale-out"), REDIS_URL, extra_models=("gone",)
    ) as instances:
        yield instances


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _infer(server: Instance, key: str, model: str = "affine") -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}
    return httpx.post(
        f"{server.url}/v2/models/{model}/infer", json=body, headers=_auth(key), timeout=60
    )


def _new_key(pair: Pair, **policy: Any) -> tuple[int, str]:
    created = httpx.post(
        f"{pair.a.url}/admin/v1/keys",
        json={"name": f"k-{uuid.uuid4().hex[:8]}", "scopes": ["infer"], **policy},
        headers=_auth(pair.key),
    )
    assert created.status_code == 201, created.text
    return created.json()["info"]["id"], created.json()["key"]


def _seconds_until(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "never happened"
        time.sleep(0.02)
    return time.monotonic() - started


def test_an_rpm_limit_of_10_holds_across_both_instances(pair: Pair) -> None:
    _, key = _new_key(pair, rpm_limit=10)
    statuses = [_infer(pair.both[i % 2], key).status_code for i in range(14)]
    assert statuses == [200] * 10 + [429] * 4


def test_a_monthly_quota_holds_across_both_instances(pair: Pair) -> None:
    _, key = _new_key(pair, monthly_request_quota=5)
    answers = [_infer(pair.both[i % 2], key) for i in range(9)]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 4
    assert answers[-1].json()["error"].startswith("monthly request quota of 5 used up")
    assert answers[-2].json()["error"].startswith("monthly request quota of 5 used up")


def test_a_key_revoked_on_a_is_refused_by_b_within_a_second(pair: Pair) -> None:
    key_id, key = _new_key(pair)
    assert _infer(pair.b, key).status_code == 200  # cached on B now
    revoked = httpx.delete(f"{pair.a.url}/admin/v1/keys/{key_id}", headers=_auth(pair.key))
    assert revoked.status_code == 200, revoked.text
    delay = _seconds_until(lambda: _infer(pair.b, key).status_code == 401)
    assert delay < 1.0, delay
    print(f"\nrevocation on A refused on B after {delay * 1000:.0f} ms")


def test_an_alias_moved_on_a_is_served_by_b_within_a_second(pair: Pair) -> None:
    def served_by_b() -> list[float]:
        r = _infer(pair.b, pair.key)
        assert r.status_code == 200, r.text
        return [float(v) for v in r.json()["outputs"][0]["data"]]

    assert served_by_b() == V1_Y
    moved = httpx.put(
        f"{pair.a.url}/admin/v1/models/affine/aliases/production",
        json={"version": 2},
        headers=_auth(pair.key),
    )
    assert moved.status_code == 200, moved.text
    delay = _seconds_until(lambda: served_by_b() == V2_Y)
    assert delay < 1.0, delay
    print(f"\nalias move on A served by B after {delay * 1000:.0f} ms")


def test_a_model_deleted_on_a_is_gone_on_b_within_a_second(pair: Pair) -> None:
    assert _infer(pair.b, pair.key, "gone").status_code == 200  # loaded and resolved on B
    deleted = httpx.delete(f"{pair.a.url}/admin/v1/models/gone?force=true", headers=_auth(pair.key))
    assert deleted.status_code == 200, deleted.text
    delay = _seconds_until(lambda: _infer(pair.b, pair.key, "gone").status_code == 404)
    assert delay < 1.0, delay


def test_usage_rows_equal_the_requests_sent_to_both(pair: Pair) -> None:
    key_id, key = _new_key(pair)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _infer(pair.both[i % 2], key), range(40)))
    assert all(r.status_code == 200 for r in answers)

    def recorded() -> int:
        usage = httpx.get(
            f"{pair.a.url}/admin/v1/usage?key={key_id}&group_by=key", headers=_auth(pair.key)
        ).json()["data"]
        return sum(row["requests"] for row in usage)

    _seconds_until(lambda: recorded() >= 40)
    time.sleep(1.5)  # three more flush intervals: nothing is written twice
    assert recorded() == 40


def test_the_audit_chain_verifies_after_both_instances_wrote_at_once(pair: Pair) -> None:
    def create(i: int) -> int:
        server = pair.both[i % 2]
        body = {"name": f"audited-{i}", "scopes": ["read"]}
        return httpx.post(
            f"{server.url}/admin/v1/keys", json=body, headers=_auth(pair.key)
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(create, range(32))) == {201}
    for server in pair.both:
        report = httpx.get(f"{server.url}/admin/v1/audit/verify", headers=_auth(pair.key)).json()
        assert report["ok"], report
        assert report["checked"] >= 32


def test_each_job_is_claimed_once_and_one_runs_at_a_time_across_both(pair: Pair) -> None:
    def submit(i: int) -> str:
        server = pair.both[i % 2]
        body = {"kind": "selftest", "spec": {"model": "affine", "sleep": 0.3}}
        r = httpx.post(f"{server.url}/admin/v1/jobs", json=body, headers=_auth(pair.key))
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    jobs = [submit(i) for i in range(4)]

    def finished() -> bool:
        return all(
            httpx.get(f"{pair.a.url}/admin/v1/jobs/{j}", headers=_auth(pair.key)).json()["status"]
            in ("succeeded", "failed")
            for j in jobs
        )

    _seconds_until(finished, timeout=120)
    registry = Registry(pair.settings)
    try:
        with registry.db.read() as s:
            rows = {row.id: row for row in s.scalars(select(JobRow).where(JobRow.id.in_(jobs)))}
    finally:
        registry.close()
    assert {row.status for row in rows.values()} == {"succeeded"}
    for job_id in jobs:
        # Its worker ran in exactly one instance's MAAS_HOME: it was started once.
        ran_in = [i for i in pair.both if (i.home / "jobs" / job_id / "events.jsonl").exists()]
        assert len(ran_in) == 1, (job_id, ran_in)
    spans = sorted((row.started_at, row.finished_at) for row in rows.values())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end is not None and start >= end  # MAAS_MAX_CONCURRENT_JOBS=1 held across both


def test_a_job_whose_instance_died_is_failed_with_a_cause_by_the_other(pair: Pair) -> None:
    # Last in this module: it kills one instance.
    body = {"kind": "selftest", "spec": {"model": "affine", "sleep": 120}}
    job = httpx.post(f"{pair.a.url}/admin/v1/jobs", json=body, headers=_auth(pair.key)).json()

    def running_in() -> list[Instance]:
        return [i for i in pair.both if (i.home / "jobs" / job["id"] / "events.jsonl").exists()]

    _seconds_until(lambda: bool(running_in()), timeout=30)
    (owner,) = running_in()
    survivor = pair.b if owner is pair.a else pair.a
    owner.kill()
    survivor_url = f"{survivor.url}/admin/v1/jobs/{job['id']}"

    def failed() -> bool:
        return httpx.get(survivor_url, headers=_auth(pair.key)).json()["status"] == "failed"

    # The survivor's runner looks for orphans every 10 s (twice the heartbeat interval).
    delay = _seconds_until(failed, timeout=30)
    error = httpx.get(survivor_url, headers=_auth(pair.key)).json()["error"]
    assert (
        error.startswith("orphaned: its server (runner ") and "stopped while the job ran" in error
    )
    print(f"\njob of a killed instance failed by the other after {delay:.1f} s: {error}")
