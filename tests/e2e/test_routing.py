"""Routing over a real server: a 90/10 split of 2000 requests, pinning, a policy change
reaching requests at once, and a shadow version that never answers a caller."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server
from tests.helpers import make_onnx_file

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("routing-home")
    model = make_onnx_file(tmp_path_factory.mktemp("onnx") / "model.onnx").parent
    registry = Registry(Settings(home=home))
    try:
        for _ in range(3):  # versions 1, 2 and 3 of the same graph
            registry.push(model, "affine", task="tensor")
    finally:
        registry.close()
    yield from start_server(home)


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=30) as client:
        yield client
        client.delete("/admin/v1/models/affine/routing")


def version_of(http: httpx.Client, **headers: str) -> str:
    r = http.post("/v2/models/affine/infer", json=BODY, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_a_90_10_split_of_2000_requests_gives_version_2_ten_percent(http: httpx.Client) -> None:
    r = http.put("/admin/v1/models/affine/routing", json={"split": {"1": 90, "2": 10}})
    assert r.status_code == 200, r.text
    counts = Counter(version_of(http, **{"x-request-id": f"req-{i}"}) for i in range(2000))
    print(f"2000 requests: {dict(counts)}")
    assert set(counts) == {"1", "2"}
    assert 0.08 <= counts["2"] / 2000 <= 0.12
    assert {version_of(http, **{"x-maas-version": "3"}) for _ in range(10)} == {"3"}


def test_a_policy_change_applies_to_the_next_request(http: httpx.Client) -> None:
    assert version_of(http) == "1"  # production
    http.put("/admin/v1/models/affine/routing", json={"split": {"3": 1}})
    assert version_of(http) == "3"
    http.delete("/admin/v1/models/affine/routing")
    assert version_of(http) == "1"


def test_a_shadow_is_mirrored_and_never_answers(http: httpx.Client) -> None:
    policy = {"split": {"1": 1}, "shadow": {"version": 2, "fraction": 0.5}}
    assert http.put("/admin/v1/models/affine/routing", json=policy).status_code == 200
    assert {version_of(http, **{"x-request-id": f"s{i}"}) for i in range(200)} == {"1"}
    metrics = http.get("/metrics").text
    mirrored = [
        line
        for line in metrics.splitlines()
        if line.startswith("maas_shadow_requests_total{") and 'version="2"' in line
    ]
    total = sum(float(line.rsplit(" ", 1)[1]) for line in mirrored)
    # About half of 200, each either answered or dropped under the bound, none an error.
    assert 60 <= total <= 140, mirrored
    assert not any('outcome="error"' in line and not line.endswith(" 0.0") for line in mirrored)
