"""The CLI in remote mode makes every HTTP request through MaasClient.

The test walks the command groups against a real server with ``--url`` and records each
request twice: where MaasClient sends a described call, and on the wire (httpx's
transports, which every httpx client in the process uses). The two lists must be equal:
a request the CLI made with any other client would show on the wire only. Each request
must also be a route of the server's OpenAPI schema.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from maas.cli.main import app
from maas.client import MaasClient
from maas.client.calls import Call
from maas.client.transport import SyncTransport
from tests.e2e.conftest import LiveServer
from tests.helpers import make_hf_dir

pytestmark = pytest.mark.slow  # a server process, job subprocesses, ~40 CLI commands

runner = CliRunner()


def _route_patterns(live: LiveServer) -> list[tuple[str, re.Pattern[str], str]]:
    schema = httpx.get(f"{live.url}/openapi.json", timeout=30).json()
    patterns = []
    for template, operations in schema["paths"].items():
        regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        for method in operations:
            patterns.append((method.upper(), re.compile(f"^{regex}$"), template))
    return patterns


def _template(
    patterns: list[tuple[str, re.Pattern[str], str]], method: str, path: str
) -> str | None:
    # the most literal template wins: /jobs/{id}/events before /jobs/{id}
    found = [t for m, p, t in patterns if m == method and p.match(path)]
    return min(found, key=lambda t: t.count("{"), default=None)


def test_every_request_the_cli_makes_in_remote_mode_is_a_maas_client_call(
    live: LiveServer, tmp_path: Path, reviews_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patterns = _route_patterns(live)
    with MaasClient(live.url, live.key) as setup:
        finished = setup.submit_job("selftest", {"model": "m:1", "metrics": {"accuracy": 0.9}})
        done = setup.follow_job(finished["id"])
    assert done["status"] == "succeeded" and done["result_ref"]

    described: list[tuple[str, str]] = []
    wire: list[tuple[str, str]] = []
    send, handle = SyncTransport._send, httpx.HTTPTransport.handle_request
    handle_async = httpx.AsyncHTTPTransport.handle_async_request

    def recording_send(self: SyncTransport, call: Call[Any]) -> Any:
        described.append((call.method, call.path))
        return send(self, call)

    def recording_handle(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        wire.append((request.method, request.url.raw_path.decode().partition("?")[0]))
        return handle(self, request)

    async def recording_handle_async(
        self: httpx.AsyncHTTPTransport, request: httpx.Request
    ) -> httpx.Response:
        wire.append((request.method, request.url.raw_path.decode().partition("?")[0]))
        return await handle_async(self, request)

    monkeypatch.setattr(SyncTransport, "_send", recording_send)
    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", recording_handle)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", recording_handle_async)

    def maas(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--url", live.url, "--api-key", live.key, *args])
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        return result.stdout

    # models and versions
    maas("models", "push", str(make_hf_dir(tmp_path / "hf")), "--name", "walk")
    maas("models", "list")
    maas("models", "show", "walk:1")
    maas("models", "versions", "walk")
    maas("models", "alias", "walk", "staging", "1")
    maas("models", "history", "walk")
    maas("models", "pull", "walk:1", str(tmp_path / "pulled"))
    maas("models", "deploy", "walk:1")
    maas("models", "route", "walk")
    # datasets and jobs
    maas("datasets", "add", str(reviews_csv), "--name", "walk-data")
    maas("datasets", "list")
    maas("datasets", "show", "walk-data:1")
    queued = json.loads(
        maas("export", "--model", "walk:1", "--detach", "--json", "--set", "opset=17")
    )
    maas("jobs", "cancel", queued["id"])
    maas("jobs", "follow", done["id"])
    maas("jobs", "show", done["id"])
    maas("jobs", "logs", done["id"])
    maas("jobs", "list", "--kind", "selftest")
    maas("models", "promote", str(done["result_ref"]), "--alias", "walk",
         "--require", "accuracy>=0.8")  # fmt: skip
    maas("models", "promote", str(done["result_ref"]), "--require", "accuracy>=0.99", code=1)
    # keys, usage, audit
    created = maas("keys", "create", "--name", "walker", "--scope", "read").strip()
    assert created.startswith("maas-sk-")
    key = next(k for k in json.loads(maas("keys", "list", "--json")) if k["name"] == "walker")
    maas("keys", "show", str(key["id"]))
    maas("keys", "update", str(key["id"]), "--rpm", "10")
    maas("keys", "rotate", str(key["id"]))
    keys = json.loads(maas("keys", "list", "--json"))
    maas("keys", "revoke", str(next(k["id"] for k in keys if k["rotated_from"] == key["id"])))
    maas("usage", "--group-by", "route")
    maas("audit", "list", "--limit", "5")
    maas("audit", "verify")
    # feedback, schedules
    maas("feedback", "show", "m")
    maas("feedback", "export", "m", "--out-dataset", "m-feedback", code=1)  # none yet
    maas("schedules", "list")

    assert Counter(wire) == Counter(described), "a request went around MaasClient"
    unrouted = [(m, p) for m, p in wire if _template(patterns, m, p) is None]
    assert not unrouted, f"requests that are no route of the schema: {unrouted}"
    used = {(m, _template(patterns, m, p)) for m, p in wire}
    for route in (
        ("POST", "/admin/v1/models/{name}/versions"),
        ("GET", "/admin/v1/models/{name}/versions/{version}/download"),
        ("POST", "/admin/v1/datasets"),
        ("POST", "/admin/v1/jobs"),
        ("DELETE", "/admin/v1/jobs/{job_id}"),
        ("GET", "/admin/v1/jobs/{job_id}/events"),
        ("GET", "/admin/v1/jobs/{job_id}/log"),
        ("GET", "/admin/v1/jobs/{job_id}/report.json"),
        ("POST", "/admin/v1/models/{name}/versions/{version}/promote"),
        ("POST", "/admin/v1/keys/{key_id}/rotate"),
        ("PATCH", "/admin/v1/keys/{key_id}"),
        ("GET", "/admin/v1/usage"),
        ("GET", "/admin/v1/audit/verify"),
        ("GET", "/admin/v1/models/{name}/monitoring"),
        ("POST", "/admin/v1/models/{name}/feedback/export"),
        ("GET", "/admin/v1/schedules"),
    ):
        assert route in used, route
