"""A schedule over two real `maas serve` instances sharing one registry: its due time
starts one pipeline run (not one per instance), which trains, evaluates, passes its gates
and ends in a canary rollout that the servers then serve."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from maas.config import Settings
from maas.registry.formats import DATASET_TASK
from maas.registry.store import Registry
from tests.e2e.instances import Instance, launch
from tests.jobs.ml_fixtures import sentiment_dataset, tiny_bert_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

TEXT = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["the food was great"]}


@pytest.fixture
def two(
    tmp_path: Path,
    tiny_bert_dir: Path,  # noqa: F811
    sentiment_dataset: Path,  # noqa: F811
) -> Iterator[tuple[Instance, Instance]]:
    home = tmp_path / "home"
    registry = Registry(Settings(home=home))
    try:
        registry.push(tiny_bert_dir, "clf", task="text-classification")
        registry.push(sentiment_dataset, "sentiment", task=DATASET_TASK)
    finally:
        registry.close()
    a = launch(home, name="a")
    try:
        b = launch(home, name="b")
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def wait_for(check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_a_schedule_runs_its_pipeline_once_to_a_canary_with_two_instances_up(
    two: tuple[Instance, Instance],
) -> None:
    a, b = two
    key = (a.home / "admin.key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=a.url, headers=headers, timeout=30) as on_a,
        httpx.Client(base_url=b.url, headers=headers, timeout=30) as on_b,
    ):
        schedule = {
            "name": "often",
            "model": "clf",
            "cron": "* * * * * */4",  # every 4 seconds (croniter's sixth field)
            "pipeline": {
                "dataset": "sentiment",
                "epochs": 1,
                "batch_size": 16,
                "max_length": 16,
                "gates": ["accuracy>=0"],
                "rollout": {"steps": [20, 100], "step_seconds": 3600},
            },
        }
        r = on_a.post("/admin/v1/schedules", json=schedule)
        assert r.status_code == 201, r.text
        runs = wait_for(lambda: on_b.get("/admin/v1/schedules/often").json()["runs"])
        paused = on_b.patch("/admin/v1/schedules/often", json={"enabled": False})
        assert paused.status_code == 200 and not paused.json()["enabled"]
        job_id = runs[-1]["id"]
        job = wait_for(
            lambda: (
                (j := on_a.get(f"/admin/v1/jobs/{job_id}").json())["status"]
                in ("succeeded", "failed")
                and j
            )
        )
        assert job["status"] == "succeeded", job
        assert job["created_by"] == "schedule:often"
        # Every due time while the run was active started nothing: one run in all.
        pipelines = on_a.get("/admin/v1/jobs", params={"kind": "pipeline"}).json()
        assert [j["id"] for j in pipelines] == [job_id]
        [rollout] = on_b.get("/admin/v1/models/clf/rollouts").json()
        assert rollout["state"] == "running" and rollout["candidate"] == 2
        assert rollout["origin"] == f"job:{job_id}"
        # Both instances now split plain requests between production and the candidate.
        versions = set()
        for i in range(60):
            client = on_a if i % 2 else on_b
            answer = client.post(
                "/v2/models/clf/infer",
                json={"inputs": [TEXT]},
                headers={"x-request-id": f"q{i}"},
            )
            assert answer.status_code == 200, answer.text
            versions.add(answer.headers["x-maas-model-version"])
        assert versions == {"clf:1", "clf:2"}
