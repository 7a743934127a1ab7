"""Console sessions with ``maas serve --workers 2``: a session made by one HTTP worker is
honoured by the other (sessions are files under MAAS_HOME, not a worker's memory)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from maas.console.sessions import LOGIN_COOKIE, SESSION_COOKIE
from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from start_server(tmp_path_factory.mktemp("console-workers"), {"MAAS_WORKERS": "2"})


def test_a_session_signed_in_on_one_worker_works_on_every_worker(two_workers: LiveServer) -> None:
    url = two_workers.url
    with httpx.Client(base_url=url) as browser:
        form = browser.get("/console")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        r = browser.post("/console/session", data={"key": two_workers.key, "csrf": token[1]})
        assert r.status_code == 303 and r.headers["location"] == "/console/models"
        session = browser.cookies[SESSION_COOKIE]
        assert LOGIN_COOKIE not in browser.cookies
    # Each request on a new connection: the supervisor's workers share the listening port,
    # so 20 connections all landing on the worker that signed in would be a 1 in 2**20 fluke.
    for _ in range(20):
        with httpx.Client(base_url=url, cookies={SESSION_COOKIE: session}) as fresh:
            page = fresh.get("/console/models")
            assert page.status_code == 200 and "<h1>Models</h1>" in page.text
            api = fresh.get("/console/api/admin/v1/models")
            assert api.status_code == 200 and api.json() == []
