"""``/admin/v1/models/{name}/routing``: set, read, clear, history, scopes, clear errors."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.test_deployments import new_key, push

PATH = "/admin/v1/models/clf/routing"


def test_a_policy_round_trips_and_its_history_names_who_changed_it(
    client: TestClient, auth: dict[str, str], hf_dir: Path
) -> None:
    push(client, auth, hf_dir)
    push(client, auth, hf_dir)
    r = client.get(PATH, headers=auth)
    assert r.status_code == 404 and "production alias" in r.json()["error"]["message"]
    body = {"split": {"1": 90, "2": 10}, "sticky": None, "shadow": {"version": 2, "fraction": 0.5}}
    r = client.put(PATH, json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() | {"updated_at": None, "updated_by": None} == {
        "model": "clf",
        **body,
        "updated_at": None,
        "updated_by": None,
    }
    assert client.get(PATH, headers=auth).json() == r.json()
    r = client.delete(PATH, headers=auth)
    assert r.status_code == 200 and r.json() == {"model": "clf", "deleted": True}
    assert client.get(PATH, headers=auth).status_code == 404
    history = client.get(PATH + "/history", headers=auth).json()
    assert [e["policy"] for e in history] == [body, None]
    assert history[0]["actor"].startswith("key:")
    # What the audit log says about it.
    actions = [e["action"] for e in client.get("/admin/v1/audit", headers=auth).json()]
    assert "routing.set" in actions and "routing.clear" in actions


def test_bad_policies_are_a_400_naming_the_field_and_unknown_models_a_404(
    client: TestClient, auth: dict[str, str], hf_dir: Path
) -> None:
    push(client, auth, hf_dir)
    r = client.put(PATH, json={"split": {"1": "ninety"}}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "split"
    r = client.put(PATH, json={"split": {"7": 1}}, headers=auth)
    assert r.status_code == 400 and "clf:7 does not exist" in r.json()["error"]["message"]
    r = client.put(PATH, content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code in (400, 422)
    r = client.put("/admin/v1/models/nope/routing", json={"split": {"1": 1}}, headers=auth)
    assert r.status_code == 404
    r = client.delete(PATH, headers=auth)
    assert r.status_code == 404 and "no routing policy" in r.json()["error"]["message"]


def test_read_keys_see_the_policy_and_only_deploy_keys_change_it(
    client: TestClient, auth: dict[str, str], hf_dir: Path
) -> None:
    push(client, auth, hf_dir)
    reader, deployer = new_key(client, ["read"]), new_key(client, ["deploy"])
    assert client.put(PATH, json={"split": {"1": 1}}, headers=reader).status_code == 403
    assert client.put(PATH, json={"split": {"1": 1}}, headers=deployer).status_code == 200
    assert client.get(PATH, headers=reader).status_code == 200
    assert client.delete(PATH, headers=reader).status_code == 403
