"""Canary rollouts over a real server with real ONNX models: a candidate that fails on
20 % of inputs is rolled back at its first step with the reason in the audit log, a
healthy one is promoted after its steps, and no caller request fails but the broken
candidate's own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.slow

A = "/admin/v1/models/lookup"


def make_lookup(path: Path, rows: int) -> Path:
    """y = table[i]: a table of ``rows`` rows. Looking up an index past its end fails in
    onnxruntime, so a table of 8 rows fails for 2 of the indices 0..9 (20 %)."""
    table = numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3)[:rows], "T")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["T", "i"], ["y"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 3])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.mkdir(parents=True)
    onnx.save(model, str(path / "model.onnx"))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("rollout-home")
    models = tmp_path_factory.mktemp("lookup")
    registry = Registry(Settings(home=home))
    try:
        registry.push(make_lookup(models / "whole", 10), "lookup", task="tensor")  # 1: production
        registry.push(make_lookup(models / "short", 8), "lookup", task="tensor")  # 2: broken
        registry.push(make_lookup(models / "whole2", 10), "lookup", task="tensor")  # 3: healthy
    finally:
        registry.close()
    yield from start_server(home)


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=30) as client:
        yield client


def infer(http: httpx.Client, n: int) -> tuple[int, str, int]:
    """(status, version that answered, index asked) of one plain-name request."""
    body = {"inputs": [{"name": "i", "datatype": "INT64", "shape": [1, 1], "data": [n % 10]}]}
    r = http.post("/v2/models/lookup/infer", json=body, headers={"x-request-id": f"r{n}"})
    version = r.json().get("model_version", "") if r.status_code == 200 else ""
    return r.status_code, str(version), n % 10


def drive(http: httpx.Client, rollout_id: int, start: int) -> tuple[Any, list[Any]]:
    """Send plain-name requests until the rollout ends (at most a minute: a step's time and
    the controller's pace are wall-clock, however fast requests go); the rollout and every
    answer."""
    answers = []
    deadline = time.monotonic() + 60
    n = start
    while time.monotonic() < deadline:
        answers.append(infer(http, n))
        if n % 10 == 9:
            rollout = http.get(f"{A}/rollouts/{rollout_id}").json()
            if rollout["state"] != "running":
                return rollout, answers
        n += 1
    return http.get(f"{A}/rollouts/{rollout_id}").json(), answers


def test_a_candidate_failing_on_20_percent_is_rolled_back_at_its_first_step(
    http: httpx.Client,
) -> None:
    plan = {"candidate": 2, "steps": [50, 100], "step_seconds": 600}
    r = http.post(f"{A}/rollouts", json={**plan, "criteria": {"min_requests": 20}})
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    assert http.get(f"{A}/routing").json()["split"] == {"1": 50, "2": 50}

    rollout, answers = drive(http, rollout_id, 0)
    assert rollout["state"] == "rolled_back" and rollout["step"] == 0
    last = rollout["events"][-1]
    assert last["action"] == "rollback" and "error rate" in last["reason"]
    assert last["figures"]["candidate"]["errors"] >= 1
    # Every failure was the candidate's own: an index its short table lacks.
    failed = [a for a in answers if a[0] != 200]
    assert failed and all(status == 400 and index >= 8 for status, _, index in failed)
    assert {version for status, version, _ in answers if status == 200} <= {"1", "2"}
    print(f"rolled back after {len(answers)} requests, {len(failed)} failed")

    audit = http.get("/admin/v1/audit", params={"action": "rollout.rollback"}).json()
    entries = audit["entries"] if isinstance(audit, dict) else audit
    assert any("error rate" in e["details"]["reason"] for e in entries)
    # Traffic is back on the baseline, and nothing fails any more.
    assert http.get(f"{A}/routing").status_code == 404
    after = [infer(http, n) for n in range(1000, 1040)]
    assert {(status, version) for status, version, _ in after} == {(200, "1")}


def test_a_healthy_candidate_is_promoted_after_its_steps_with_no_failed_request(
    http: httpx.Client,
) -> None:
    plan = {
        "candidate": 3,
        "steps": [50, 100],
        "step_seconds": 1,
        # Latency on a shared 2-core test machine is noise, not the subject here.
        "criteria": {"min_requests": 10, "max_p95_ratio": 100},
    }
    r = http.post(f"{A}/rollouts", json=plan)
    assert r.status_code == 201, r.text
    rollout, answers = drive(http, r.json()["id"], 100_000)
    assert rollout["state"] == "promoted", rollout
    assert [e["action"] for e in rollout["events"]] == ["start", "advance", "promote"]
    assert all(status == 200 for status, _, _ in answers)
    assert {version for _, version, _ in answers} == {"1", "3"}
    aliases = {a["alias"]: a["version"] for a in http.get(f"{A}/aliases").json()}
    assert aliases["production"] == 3
    assert {infer(http, n)[1] for n in range(5000, 5020)} == {"3"}
    print(f"promoted after {len(answers)} requests")


def test_rollout_requests_are_checked(http: httpx.Client) -> None:
    r = http.post(f"{A}/rollouts", json={"candidate": 99})
    assert r.status_code == 400 and r.json()["error"]["param"] == "candidate"
    r = http.post(f"{A}/rollouts", json={"candidate": 1, "steps": "fast"})
    assert r.status_code == 400
    assert http.get(f"{A}/rollouts/12345").status_code == 404


def test_the_cli_shows_and_cancels_a_rollout_over_http(
    live: LiveServer, http: httpx.Client
) -> None:
    from typer.testing import CliRunner

    from maas.cli.main import app

    env = {"MAAS_URL": live.url, "MAAS_API_KEY": live.key}
    cli = CliRunner()
    started = cli.invoke(app, ["models", "rollout", "start", "lookup", "--candidate", "1"], env=env)
    assert started.exit_code == 0, started.output
    assert "v1 against v3" in started.output
    shown = cli.invoke(app, ["models", "rollout", "status", "lookup", "--json"], env=env)
    assert shown.exit_code == 0 and '"state": "running"' in shown.output
    stopped = cli.invoke(app, ["models", "rollout", "cancel", "lookup"], env=env)
    assert stopped.exit_code == 0 and "cancelled" in stopped.output
    again = cli.invoke(app, ["models", "rollout", "cancel", "lookup"], env=env)
    assert again.exit_code != 0 and "already ended" in again.output
