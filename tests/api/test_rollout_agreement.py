"""A classifier's rollout judged on agreement with the baseline: while it runs, the requests
the baseline answers are mirrored to the candidate and each comparison is recorded; a
candidate that labels differently is rolled back, one that agrees is promoted.

In process (``TestClient``): the app's own controller and shadow mirror, a real registry,
tiny real BERT classifiers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_deployments import push
from tests.helpers import make_tiny_bert

A = "/admin/v1/models/clf"
BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the cat"]}]}


def drive(client: TestClient, auth: dict[str, str], rollout_id: int) -> dict[str, Any]:
    """Plain requests until the rollout ends (each answered: the caller never sees a mirror)."""
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline:
        for _ in range(10):
            r = client.post(
                "/v2/models/clf/infer", json=BODY, headers={**auth, "x-request-id": f"q{n}"}
            )
            assert r.status_code == 200, r.text
            n += 1
        rollout: dict[str, Any] = client.get(f"{A}/rollouts/{rollout_id}", headers=auth).json()
        if rollout["state"] != "running":
            return rollout
        time.sleep(0.1)
    raise AssertionError("the rollout did not end")


def start(client: TestClient, auth: dict[str, str], candidate: int, seconds: float) -> int:
    plan = {
        "candidate": candidate,
        "steps": [50, 100],
        "step_seconds": seconds,
        "criteria": {"min_requests": 10, "min_agreement": 0.9, "max_p95_ratio": 100},
    }
    r = client.post(f"{A}/rollouts", json=plan, headers=auth)
    assert r.status_code == 201, r.text
    policy = client.get(f"{A}/routing", headers=auth).json()
    assert policy["shadow"] == {"version": candidate, "fraction": 1.0}
    return int(r.json()["id"])


@pytest.mark.slow
def test_a_candidate_that_labels_differently_is_rolled_back_on_agreement(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    push(client, auth, make_tiny_bert(tmp_path / "clf", classifier=True))
    # The same weights with the label names swapped: every top label differs.
    push(client, auth, make_tiny_bert(tmp_path / "flip", classifier=True, labels=("pos", "neg")))
    rollout = drive(client, auth, start(client, auth, 2, 3600))
    assert rollout["state"] == "rolled_back" and rollout["step"] == 0
    last = rollout["events"][-1]
    assert "agreement with the baseline 0.0%" in last["reason"]
    assert last["figures"]["agreement"]["compared"] >= 10
    assert client.get(f"{A}/routing", headers=auth).status_code == 404


def test_a_candidate_that_agrees_is_promoted(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    classifier = make_tiny_bert(tmp_path / "clf", classifier=True)
    push(client, auth, classifier)
    push(client, auth, classifier)
    rollout = drive(client, auth, start(client, auth, 2, 1))
    assert rollout["state"] == "promoted", rollout
    promoted = rollout["events"][-1]
    assert promoted["figures"]["agreement"]["rate"] == 1.0
    aliases = {a["alias"]: a["version"] for a in client.get(f"{A}/aliases", headers=auth).json()}
    assert aliases["production"] == 2
