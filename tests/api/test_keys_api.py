"""The key management routes: one set of policy fields and bounds for creating and updating."""

from __future__ import annotations

from fastapi.testclient import TestClient

from maas.api.keys import UpdateKeyRequest
from maas.security.keys import KeyPolicy


def test_an_update_takes_exactly_the_fields_a_new_key_takes() -> None:
    assert set(UpdateKeyRequest.model_fields) == set(KeyPolicy.model_fields)
    for name, field in KeyPolicy.model_fields.items():
        assert UpdateKeyRequest.model_fields[name].metadata == field.metadata, name


def test_create_and_update_enforce_the_same_bounds(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.post("/admin/v1/keys", json={"name": "team", "rpm_limit": 10}, headers=auth)
    assert r.status_code == 201, r.text
    key_id = r.json()["info"]["id"]
    for bad in ({"owner": "x" * 129}, {"rpm_limit": 0}, {"monthly_token_quota": -1}):
        created = client.post("/admin/v1/keys", json={"name": "n", **bad}, headers=auth)
        updated = client.patch(f"/admin/v1/keys/{key_id}", json=bad, headers=auth)
        assert (created.status_code, updated.status_code) == (400, 400), (bad, updated.text)
    r = client.patch(
        f"/admin/v1/keys/{key_id}", json={"rpm_limit": None, "owner": "ml"}, headers=auth
    )
    assert r.status_code == 200 and r.json()["rpm_limit"] is None and r.json()["owner"] == "ml"
