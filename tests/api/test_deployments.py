"""``/admin/v1/models/{name}/versions/{version}/deployment`` and the load/unload records."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from tests.helpers import tar_of_dir

TAR = {"Content-Type": "application/x-tar"}
PATH = "/admin/v1/models/clf/versions/{}/deployment"


def push(client: TestClient, auth: dict[str, str], hf_dir: Path) -> None:
    r = client.post(
        "/admin/v1/models/clf/versions",
        params={"task": "text-classification"},
        content=tar_of_dir(hf_dir),
        headers={**auth, **TAR},
    )
    assert r.status_code == 201, r.text


def new_key(client: TestClient, scopes: list[str]) -> dict[str, str]:
    _, plaintext = client.app.state.keys.create("k", scopes)  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {plaintext}"}


def test_get_shows_the_defaults_and_put_changes_only_what_it_sends(
    client: TestClient, auth: dict[str, str], hf_dir: Path
) -> None:
    push(client, auth, hf_dir)
    r = client.get(PATH.format(1), headers=auth)
    assert r.status_code == 200
    assert r.json() | {"updated_at": None} == {
        "model": "clf",
        "version": 1,
        "loaded": None,
        "pinned": False,
        "replicas": None,
        "min_replicas": None,
        "max_replicas": None,
        "target_ongoing_requests": None,
        "num_cpus": None,
        "updated_at": None,
        "updated_by": None,
    }
    r = client.put(PATH.format(1), json={"replicas": 2, "num_cpus": 1}, headers=auth)
    assert r.status_code == 200, r.text
    r = client.put(PATH.format("production"), json={"pinned": True}, headers=auth)
    body = client.get(PATH.format(1), headers=auth).json()
    assert (body["replicas"], body["num_cpus"], body["pinned"]) == (2, 1.0, True)
    assert body["updated_by"].startswith("key:") and body["updated_at"]


def test_bad_settings_are_a_400_naming_the_field(
    client: TestClient, auth: dict[str, str], hf_dir: Path
) -> None:
    push(client, auth, hf_dir)
    cases = [
        ({"replicas": 0}, "replicas"),
        ({"replicas": "2"}, "replicas"),
        ({"min_replicas": 4, "max_replicas": 2}, "min_replicas"),
        ({"min_replicas": 1}, "max_replicas"),
        ({"num_cpus": -0.5}, "num_cpus"),
        ({"replica": 1}, "replica"),
    ]
    for body, param in cases:
        r = client.put(PATH.format(1), json=body, headers=auth)
        assert r.status_code == 400, (body, r.text)
        assert param in (r.json()["error"]["param"] or ""), (body, r.json())
    assert client.put(PATH.format(7), json={"replicas": 1}, headers=auth).status_code == 404


def test_reading_needs_read_and_changing_needs_deploy(
    client: TestClient, auth: dict[str, str], hf_dir: Path
) -> None:
    push(client, auth, hf_dir)
    reader = new_key(client, ["read"])
    assert client.get(PATH.format(1), headers=reader).status_code == 200
    assert client.put(PATH.format(1), json={"replicas": 2}, headers=reader).status_code == 403
    deployer = new_key(client, ["deploy"])
    assert client.put(PATH.format(1), json={"replicas": 2}, headers=deployer).status_code == 200


def test_load_and_unload_record_the_desired_state_for_every_instance(
    client: TestClient, auth: dict[str, str], onnx_file: Path
) -> None:
    r = client.post(
        "/admin/v1/models/affine/versions",
        params={"filename": "affine.onnx"},
        content=onnx_file.read_bytes(),
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    path = "/admin/v1/models/affine/versions/1"
    assert client.post(path + "/load?pin=true", headers=auth).status_code == 200
    spec = client.get(path + "/deployment", headers=auth).json()
    assert (spec["loaded"], spec["pinned"]) == (True, True)
    assert client.post(path + "/unload", headers=auth).json()["unloaded"] is True
    spec = client.get(path + "/deployment", headers=auth).json()
    assert (spec["loaded"], spec["pinned"]) == (False, False)


def test_a_change_is_audited_as_version_deploy(
    client: TestClient, auth: dict[str, str], hf_dir: Path
) -> None:
    push(client, auth, hf_dir)
    assert client.put(PATH.format(1), json={"replicas": 2}, headers=auth).status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the entry is written after the response
        log = client.get("/admin/v1/audit", params={"limit": 100}, headers=auth).json()
        actions = {(e["action"], e["target"]) for e in log}
        if ("version.deploy", "/admin/v1/models/clf/versions/1/deployment") in actions:
            return
        time.sleep(0.05)
    raise AssertionError(f"no version.deploy entry in {actions}")
