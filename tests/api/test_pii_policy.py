"""PII policies of keys and models applied to inference inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from maas.registry.store import Registry
from maas.security.pii import PiiPolicy, strictest

ID = "11010519491231002X"  # a checksum-valid resident ID number (not a real person's)
TEXT = f"我的身份证号是{ID}，电话13812345678"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (None, None, "off"),
        ("redact:input", None, "redact:input"),
        ("redact:input", "redact:output", "redact"),
        ("redact", "block:output", "block:output"),
        ("off", "block", "block"),
    ],
)
def test_the_strictest_policy_wins(a: str | None, b: str | None, expected: str) -> None:
    policies = [PiiPolicy.parse(p) if p else None for p in (a, b)]
    assert str(strictest(*policies)) == expected


@pytest.fixture
def minilm(registry: Registry, minilm_dir: Path) -> str:
    registry.push(minilm_dir, "minilm", task="embeddings")
    return "minilm"


def _key(client: TestClient, auth: dict[str, str], policy: str) -> dict[str, str]:
    r = client.post("/admin/v1/keys", json={"name": "p", "pii_policy": policy}, headers=auth)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def _embed(client: TestClient, headers: dict[str, str], text: str) -> np.ndarray | str:
    r = client.post("/v1/embeddings", json={"model": "minilm", "input": text}, headers=headers)
    if r.status_code != 200:
        return str(r.json()["error"]["message"])
    return np.array(r.json()["data"][0]["embedding"])


@pytest.mark.slow
def test_key_policies_redact_or_block_inputs(
    client: TestClient, auth: dict[str, str], minilm: str
) -> None:
    redacted_text = "我的身份证号是[ID]，电话[PHONE]"
    plain = _embed(client, auth, TEXT)
    reference = _embed(client, auth, redacted_text)
    redacting = _embed(client, _key(client, auth, "redact"), TEXT)
    assert isinstance(plain, np.ndarray) and isinstance(redacting, np.ndarray)
    np.testing.assert_allclose(redacting, reference, atol=1e-6)  # the model saw the redaction
    assert not np.allclose(plain, reference, atol=1e-3)
    blocked = _embed(client, _key(client, auth, "block"), TEXT)
    assert isinstance(blocked, str)
    assert "ID" in blocked.upper() and ID not in blocked and "13812345678" not in blocked
    r = client.post("/admin/v1/keys", json={"name": "bad", "pii_policy": "shred"}, headers=auth)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "pii_policy"


@pytest.mark.slow
def test_a_model_tagged_block_refuses_pii_for_every_key(
    client: TestClient, auth: dict[str, str], minilm: str
) -> None:
    r = client.patch(
        "/admin/v1/models/minilm/versions/1", json={"tags": {"pii_policy": "block"}}, headers=auth
    )
    assert r.status_code == 200, r.text
    body = {"model": "minilm", "input": [f"id {ID}"]}
    r = client.post("/v1/embeddings", json=body, headers=auth)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "pii_blocked"
    v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [f"id {ID}"]}]}
    r = client.post("/v2/models/minilm/infer", json=v2, headers=auth)
    assert r.status_code == 400
    assert ID not in r.text
    clean = client.post("/v1/embeddings", json={"model": "minilm", "input": "hello"}, headers=auth)
    assert clean.status_code == 200
