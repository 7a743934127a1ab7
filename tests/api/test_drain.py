"""``begin_drain``: the first step of a graceful shutdown, as the app sees it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from maas.api.app import begin_drain


def test_readiness_turns_503_at_once_while_liveness_and_requests_still_answer(
    client: TestClient, auth: dict[str, str]
) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    begin_drain(client.app)  # type: ignore[arg-type]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/healthz").status_code == 200  # alive: do not restart it
    assert client.get("/v2/health/live").status_code == 200
    # A request that still reaches this server (an open keep-alive connection) is served.
    assert client.get("/v1/models", headers=auth).status_code == 200


def test_a_draining_server_starts_no_queued_job(client: TestClient, auth: dict[str, str]) -> None:
    begin_drain(client.app)  # type: ignore[arg-type]
    job = client.post(
        "/admin/v1/jobs", json={"kind": "selftest", "spec": {"model": "x"}}, headers=auth
    )
    assert job.status_code == 201, job.text
    runner = client.app.state.jobs  # type: ignore[attr-defined]
    runner.tick()
    assert client.get(f"/admin/v1/jobs/{job.json()['id']}", headers=auth).json()["status"] == (
        "queued"
    )
