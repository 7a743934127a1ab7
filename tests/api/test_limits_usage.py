"""Rate limits, quotas and usage metering through the API, on real models."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from maas.errors import RateLimitedError
from maas.registry.store import Registry
from maas.security.limits import RateLimiter
from tests.helpers import make_onnx_file

X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}


@pytest.fixture
def affine(registry: Registry, tmp_path: Path) -> str:
    registry.push(make_onnx_file(tmp_path / "m" / "model.onnx").parent, "affine", task="tensor")
    return "affine"


def _key(client: TestClient, auth: dict[str, str], **policy: Any) -> tuple[int, dict[str, str]]:
    r = client.post("/admin/v1/keys", json={"name": "limited", **policy}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()["info"]["id"], {"Authorization": f"Bearer {r.json()['key']}"}


def test_rpm_limit_answers_429_with_retry_after_and_openai_headers(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    _, key = _key(client, auth, rpm_limit=3)
    remaining = []
    for _ in range(3):
        r = client.post("/v2/models/affine/infer", json=X, headers=key)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    r = client.post("/v2/models/affine/infer", json=X, headers=key)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "3 requests per minute" in r.json()["error"]
    # another key is not affected
    _, other = _key(client, auth, rpm_limit=3)
    assert client.post("/v2/models/affine/infer", json=X, headers=other).status_code == 200


@pytest.mark.slow
def test_tpm_counts_real_tokens_after_the_fact(
    client: TestClient, auth: dict[str, str], registry: Registry, minilm_dir: Path
) -> None:
    registry.push(minilm_dir, "minilm", task="embeddings")
    _, key = _key(client, auth, tpm_limit=20)
    body = {"model": "minilm", "input": "one two three four five six seven eight nine ten"}
    r = client.post("/v1/embeddings", json=body, headers=key)
    assert r.status_code == 200, r.text
    used = r.json()["usage"]["prompt_tokens"]
    assert used == 12  # [CLS] + 10 words + [SEP]
    r = client.post("/v1/embeddings", json=body, headers=key)
    assert r.status_code == 200
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 20 - used
    # 24 of 20 are now accounted (capped at the window): the next request is refused
    r = client.post("/v1/embeddings", json=body, headers=key)
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert "tokens per minute" in r.json()["error"]["message"]


def test_monthly_request_quota(client: TestClient, auth: dict[str, str], affine: str) -> None:
    _, key = _key(client, auth, monthly_request_quota=2)
    for _ in range(2):
        assert client.post("/v2/models/affine/infer", json=X, headers=key).status_code == 200
    r = client.post("/v2/models/affine/infer", json=X, headers=key)
    assert r.status_code == 429
    assert "monthly request quota of 2" in r.json()["error"]
    assert int(r.headers["retry-after"]) > 0
    r = client.post("/v1/embeddings", json={"model": "affine", "input": "x"}, headers=key)
    assert r.json()["error"]["code"] == "insufficient_quota"


def test_usage_aggregation_equals_the_requests_made(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    key_id, key = _key(client, auth)
    statuses = []
    for body in (X, X, X, {"inputs": []}):
        statuses.append(client.post("/v2/models/affine/infer", json=body, headers=key).status_code)
    assert statuses == [200, 200, 200, 400]
    r = client.get(f"/admin/v1/usage?key={key_id}&group_by=status", headers=auth)
    assert r.status_code == 200, r.text
    rows = {row["status"]: row for row in r.json()["data"]}
    assert rows[200]["requests"] == 3
    assert rows[200]["items"] == 3
    assert rows[400]["requests"] == 1
    assert rows[200]["compute_seconds"] > 0
    assert rows[200]["energy_joules"] == pytest.approx(rows[200]["compute_seconds"] * 35, rel=1e-3)
    assert rows[200]["bytes_in"] == 3 * len(client.build_request("POST", "/", json=X).content)
    by_model = client.get(f"/admin/v1/usage?key={key_id}&group_by=model", headers=auth).json()
    assert [(row["model"], row["requests"]) for row in by_model["data"]] == [("affine", 4)]
    day = client.get("/admin/v1/usage?group_by=day", headers=auth).json()["data"]
    assert sum(row["requests"] for row in day) == 4
    future = client.get("/admin/v1/usage?from=2099-01-01T00:00:00Z", headers=auth).json()
    assert future["data"] == []
    assert client.get("/admin/v1/usage?group_by=week", headers=auth).status_code == 400
    key_info = client.get(f"/admin/v1/keys/{key_id}", headers=auth).json()
    assert key_info["last_used_at"] is not None


REDIS_URL = os.environ.get("MAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_rate_limiter_backends(backend: str) -> None:
    async def scenario() -> None:
        limiter = RateLimiter(REDIS_URL if backend == "redis" else None, f"test-{uuid.uuid4()}")
        try:
            if backend == "redis":
                try:
                    await limiter.check_tokens(1, 10, 1)
                except Exception as exc:  # connection refused and the like
                    pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
            for expected in (1, 0):
                state = await limiter.acquire_request(1, 2)
                assert state.remaining == expected
            with pytest.raises(RateLimitedError) as info:
                await limiter.acquire_request(1, 2)
            assert "Retry-After" in info.value.headers
            state = await limiter.record_tokens(1, 100, 60)
            assert state.remaining == 40
            with pytest.raises(RateLimitedError):
                await limiter.check_tokens(1, 100, 41)
            assert (await limiter.check_tokens(1, 100, 40)).remaining == 40
            with pytest.raises(RateLimitedError) as info:
                await limiter.check_tokens(1, 100, 101)
            assert info.value.param == "max_tokens"
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_model_listings_do_not_count_against_the_requests_per_minute(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    # An openai client lists models on its own; discovery must not use up the minute.
    _, key = _key(client, auth, rpm_limit=2, scopes=["infer"])
    for _ in range(5):
        assert client.get("/v1/models", headers=key).status_code == 200
        assert client.get("/v2/models/affine", headers=key).status_code == 200
    statuses = [client.post("/v2/models/affine/infer", json=X, headers=key) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
