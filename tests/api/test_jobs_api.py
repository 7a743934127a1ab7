"""Jobs, datasets, promotion and lineage over the management API (real subprocesses, SQLite)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maas.api import jobs as jobs_api
from maas.api.app import create_app
from maas.config import Settings
from maas.jobs.runner import JobRunner
from tests.helpers import make_hf_dir, tar_of_dir

A = "/admin/v1"


def app_with_jobs(settings: Settings) -> FastAPI:
    """The app, plus the jobs router and runner where ``create_app`` does not wire them yet."""
    app = create_app(settings)
    if f"{A}/jobs" not in app.openapi()["paths"]:
        app.include_router(jobs_api.router)
        app.openapi_schema = None  # built again, with the routes just added
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            if getattr(a.state, "jobs", None) is not None:
                yield state
                return
            runner = JobRunner(a.state.registry, settings, poll_interval=0.05)
            await runner.start()
            a.state.jobs = runner
            try:
                yield state
            finally:
                await runner.close()

    app.router.lifespan_context = lifespan
    return app


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, gc_grace_seconds=0, job_cancel_grace_seconds=2)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app_with_jobs(settings)) as c:
        yield c


@pytest.fixture
def model(client: TestClient, auth: dict[str, str], tmp_path: Path) -> str:
    body = tar_of_dir(make_hf_dir(tmp_path / "hf"))
    r = client.post(
        f"{A}/models/m/versions",
        params={"task": "text-classification"},
        content=body,
        headers={**auth, "Content-Type": "application/x-tar"},
    )
    assert r.status_code == 201, r.text
    return "m:1"


def wait_for(client: TestClient, auth: dict[str, str], job_id: str, timeout: float = 30) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{A}/jobs/{job_id}", headers=auth).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def sse(text: str) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    """(event type, data) of every event in a Server-Sent Events body."""
    found = []
    for block in text.split("\n\n"):
        kind, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
        if data is not None:
            found.append((kind, data))
    return found


def test_the_routes_are_served(client: TestClient) -> None:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    for path in (
        f"{A}/jobs",
        f"{A}/jobs/{{job_id}}/events",
        f"{A}/jobs/{{job_id}}/report.json",
        f"{A}/datasets",
        f"{A}/models/{{name}}/versions/{{version}}/promote",
        f"{A}/models/{{name}}/versions/{{version}}/lineage",
    ):
        assert path in paths


def test_a_job_streams_its_events_and_produces_a_version_with_lineage_and_reports(
    client: TestClient, auth: dict[str, str], model: str
) -> None:
    r = client.post(
        f"{A}/jobs",
        json={"kind": "selftest", "spec": {"model": model, "sleep": 0.6}, "seed": 3},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["seed"] == 3
    assert job["created_by"].startswith("key:bootstrap-admin")

    # The stream ends by itself when the job ends.
    with client.stream("GET", f"{A}/jobs/{job['id']}/events", headers=auth) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        body = "".join(stream.iter_text())
    events = sse(body)
    progress = [data for kind, data in events if kind == "message"]
    assert progress and all(e["type"] == "progress" for e in progress)
    assert [s for s in (e["step"] for e in progress)] == sorted(e["step"] for e in progress)
    kind, final = events[-1]
    assert kind == "end" and final["status"] == "succeeded"
    assert final["result_ref"] == "m:2"

    # Resuming after the last seen id replays nothing old.
    last_id = body.count("\nid: ") + body.startswith("id: ")
    again = client.get(
        f"{A}/jobs/{job['id']}/events", headers={**auth, "Last-Event-ID": str(last_id)}
    )
    assert [k for k, _ in sse(again.text)] == ["end"]

    version = client.get(f"{A}/models/m/versions/2", headers=auth).json()
    assert version["parent"] == "m:1" and version["job_id"] == job["id"]
    chain = client.get(f"{A}/models/m/versions/2/lineage", headers=auth).json()
    assert [(v["model"], v["version"], v["job_id"]) for v in chain] == [
        ("m", 2, job["id"]),
        ("m", 1, None),
    ]
    report = client.get(f"{A}/jobs/{job['id']}/report", headers=auth)
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    assert "selftest of m:1" in report.text
    assert client.get(f"{A}/jobs/{job['id']}/report.json", headers=auth).json()["seed"] == 3
    log = client.get(f"{A}/jobs/{job['id']}/log", headers=auth)
    assert "created m:2" in log.text
    listed = client.get(f"{A}/jobs", params={"status": "succeeded"}, headers=auth).json()
    assert [j["id"] for j in listed] == [job["id"]]
    assert client.get(f"{A}/jobs", params={"kind": "train"}, headers=auth).json() == []


def test_a_failing_job_reports_its_message_and_has_no_report(
    client: TestClient, auth: dict[str, str], model: str
) -> None:
    spec = {"model": model, "fail": "labels do not match"}
    job = client.post(f"{A}/jobs", json={"kind": "selftest", "spec": spec}, headers=auth).json()
    done = wait_for(client, auth, job["id"])
    assert done["status"] == "failed"
    assert done["error"] == "RuntimeError: labels do not match"
    r = client.get(f"{A}/jobs/{job['id']}/report", headers=auth)
    assert r.status_code == 404


def test_delete_cancels_a_running_job(client: TestClient, auth: dict[str, str], model: str) -> None:
    spec = {"model": model, "sleep": 60}
    job = client.post(f"{A}/jobs", json={"kind": "selftest", "spec": spec}, headers=auth).json()
    deadline = time.monotonic() + 30
    while not client.get(f"{A}/jobs/{job['id']}", headers=auth).json()["progress"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = client.delete(f"{A}/jobs/{job['id']}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["error"].startswith("cancelled by key:bootstrap-admin")
    assert client.delete(f"{A}/jobs/{job['id']}", headers=auth).status_code == 409


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"kind": "bake"}, "kind"),
        ({"kind": "selftest", "seed": -1}, "seed"),
        ({"kind": "selftest", "extra": 1}, "extra"),
    ],
)
def test_bad_job_requests_are_400s(
    client: TestClient, auth: dict[str, str], body: dict[str, Any], param: str
) -> None:
    r = client.post(f"{A}/jobs", json=body, headers=auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_jobs_are_404s(client: TestClient, auth: dict[str, str]) -> None:
    for path in ("", "/events", "/log", "/report", "/report.json"):
        assert client.get(f"{A}/jobs/{'0' * 32}{path}", headers=auth).status_code == 404
    assert client.get(f"{A}/jobs/not-a-job", headers=auth).status_code == 404
    assert client.delete(f"{A}/jobs/{'0' * 32}", headers=auth).status_code == 404


def test_csv_upload_becomes_a_dataset_with_its_preprocessing_recorded(
    client: TestClient, auth: dict[str, str]
) -> None:
    rows = ["review,stars,lang"]
    rows += [f"review number {i} is fine,{i % 2},{'en' if i % 3 else 'de'}" for i in range(40)]
    rows += ["review number 0 is fine,0,en", "ok,1,en", ",1,en"]  # duplicate, short, empty
    r = client.post(
        f"{A}/datasets",
        params={
            "name": "reviews",
            "filename": "reviews.csv",
            "text_column": "review",
            "label_column": "stars",
            "label_map": '{"0": "neg", "1": "pos"}',
            "min_chars": 5,
            "splits": "0.5,0.25,0.25",
            "seed": 1,
            "slice_columns": "lang",
        },
        content="\n".join(rows).encode(),
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["ref"] == "reviews:1" and info["kind"] == "text"
    assert info["label_names"] == ["neg", "pos"]
    assert info["splits"] == {"train": 20, "validation": 10, "test": 10}
    removed = info["preprocessing"]["removed"]
    assert removed == {"empty_text": 1, "missing_label": 0, "length": 1, "duplicates": 1}
    assert info["preprocessing"]["label_map"] == {"0": "neg", "1": "pos"}
    assert info["source"]["name"] == "reviews.csv"
    assert client.get(f"{A}/datasets", headers=auth).json()[0]["ref"] == "reviews:1"
    assert client.get(f"{A}/datasets/reviews", headers=auth).json()["digest"] == info["digest"]
    # A dataset is not a model: it is kept out of the OpenAI model list.
    ids = [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    assert "reviews" not in ids
    assert client.get("/v1/models/reviews", headers=auth).status_code == 404
    r = client.get("/v2/models/reviews", headers=auth)
    assert r.status_code == 404 and "is a dataset" in r.json()["error"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"name": "d", "source": "s3://bucket/x"}, "source"),
        ({"name": "d"}, "filename"),
        ({"name": "d", "source": "sklearn:digits", "splits": "0.5,0.5"}, "splits"),
        ({"name": "d", "source": "sklearn:digits", "label_map": "{"}, "label_map"),
        ({"name": "BAD NAME", "source": "sklearn:digits"}, "name"),
    ],
)
def test_bad_dataset_requests_are_400s(
    client: TestClient, auth: dict[str, str], params: dict[str, str], param: str
) -> None:
    r = client.post(f"{A}/datasets", params=params, headers=auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_promotion_moves_the_alias_only_when_every_gate_holds(
    client: TestClient, auth: dict[str, str], model: str
) -> None:
    r = client.patch(
        f"{A}/models/m/versions/1",
        json={"metrics": {"accuracy": 0.93, "latency_ms_bs1": 25.0, "test": {"f1": 0.9}}},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    url = f"{A}/models/m/versions/1/promote"

    r = client.post(
        url,
        json={"alias": "canary", "require": ["accuracy>=0.9", "latency_ms_bs1<=20"]},
        headers=auth,
    )
    assert r.status_code == 409, r.text
    message = r.json()["error"]["message"]
    assert "latency_ms_bs1<=20 (is 25)" in message and "accuracy" not in message.split(":", 1)[1]
    aliases = client.get(f"{A}/models/m/aliases", headers=auth).json()
    assert [a["alias"] for a in aliases] == ["production"]  # the first version's; no canary

    for gates, status in (
        (["accuracy>>0.9"], 400),
        (["recall>=0.5"], 400),
        (["test>=0.5"], 400),
    ):
        r = client.post(url, json={"require": gates}, headers=auth)
        assert r.status_code == status, (gates, r.text)
        assert r.json()["error"]["param"] == "require"

    r = client.post(
        url,
        json={"alias": "canary", "require": ["accuracy>=0.9", "test.f1>0.85"]},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["version"]["aliases"] == ["canary", "production"]
    assert result["previous"] is None
    assert [g["passed"] for g in result["gates"]] == [True, True]
    history = client.get(f"{A}/models/m/aliases/canary/history", headers=auth).json()
    assert history[-1]["to_version"] == 1
    assert "accuracy>=0.9" in history[-1]["reason"]


def test_read_keys_may_follow_jobs_but_not_start_or_cancel_them(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.post(f"{A}/keys", json={"name": "reader", "scopes": ["read"]}, headers=auth)
    reader = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.get(f"{A}/jobs", headers=reader).status_code == 200
    assert client.get(f"{A}/datasets", headers=reader).status_code == 200
    assert client.post(f"{A}/jobs", json={"kind": "selftest"}, headers=reader).status_code == 403
    assert client.delete(f"{A}/jobs/{'0' * 32}", headers=reader).status_code == 403
    r = client.post(f"{A}/datasets", params={"name": "d"}, headers=reader)
    assert r.status_code == 403
