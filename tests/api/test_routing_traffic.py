"""Routing policies applied to live requests: splits, pinning, sticky keys, shadow mirrors.

In process (``TestClient``), V2 inference on a tiny text classifier pushed twice:
the V2 answer's ``model_version`` says which version answered.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.api.test_deployments import new_key, push
from tests.helpers import make_tiny_bert

INFER = "/v2/models/clf/infer"
BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the cat"]}]}


def versions(client: TestClient, auth: dict[str, str], tmp_path: Path) -> None:
    """Versions 1 and 2 of ``clf``: the same tiny random BERT classifier, pushed twice."""
    classifier = make_tiny_bert(tmp_path / "clf", classifier=True)
    push(client, auth, classifier)
    push(client, auth, classifier)


def route(client: TestClient, auth: dict[str, str], policy: dict[str, Any]) -> None:
    r = client.put("/admin/v1/models/clf/routing", json=policy, headers=auth)
    assert r.status_code == 200, r.text


def served(client: TestClient, headers: dict[str, str]) -> str:
    r = client.post(INFER, json=BODY, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_a_90_10_split_places_requests_by_id_and_a_header_pins_a_version(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    versions(client, auth, tmp_path)
    assert served(client, auth) == "1"  # no policy: production
    route(client, auth, {"split": {"1": 90, "2": 10}})
    counts = Counter(served(client, {**auth, "x-request-id": f"r{i}"}) for i in range(500))
    assert set(counts) == {"1", "2"} and 0.05 <= counts["2"] / 500 <= 0.15
    # One id, one version, however often it is retried.
    again = {served(client, {**auth, "x-request-id": "r7"}) for _ in range(10)}
    assert len(again) == 1
    # Pinning bypasses the split; a malformed pin is refused in V2's error shape.
    assert {served(client, {**auth, "x-maas-version": "2"}) for _ in range(20)} == {"2"}
    r = client.post(INFER, json=BODY, headers={**auth, "x-maas-version": "two"})
    assert r.status_code == 400 and "x-maas-version" in r.json()["error"]
    # The body's own version beats the policy too.
    r = client.post("/v2/models/clf/versions/1/infer", json=BODY, headers=auth)
    assert r.json()["model_version"] == "1"


def test_a_sticky_split_keeps_each_key_on_one_version(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    versions(client, auth, tmp_path)
    route(client, auth, {"split": {"1": 50, "2": 50}, "sticky": "key"})
    seen: set[str] = set()
    for _ in range(6):
        key = new_key(client, ["infer"])
        got = {served(client, {**key, "x-request-id": f"r{i}"}) for i in range(15)}
        assert len(got) == 1
        seen |= got
    assert seen <= {"1", "2"}


def test_a_shadow_gets_mirrors_whose_answers_are_counted_never_returned(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    versions(client, auth, tmp_path)
    route(client, auth, {"split": {"1": 1}, "shadow": {"version": 2, "fraction": 1.0}})
    assert {served(client, auth) for _ in range(20)} == {"1"}
    metrics = client.app.state.metrics.registry  # type: ignore[attr-defined]
    labels = {"model": "clf", "version": "2"}
    deadline = time.monotonic() + 20
    while (
        metrics.get_sample_value("maas_shadow_requests_total", {**labels, "outcome": "ok"}) or 0
    ) < 20:
        assert time.monotonic() < deadline, "the mirrors did not run"
        time.sleep(0.05)
    # The same weights answer the same labels: every mirrored item agreed.
    agreed = metrics.get_sample_value("maas_shadow_agreement_total", {**labels, "agree": "true"})
    assert agreed == 20
    # Mirrors are not the caller's usage: only the 20 requests were metered.
    r = client.get("/metrics", headers=auth)
    assert 'maas_shadow_requests_total{model="clf",outcome="ok",version="2"} 20.0' in r.text
