"""MaasClient against a real server: every area of the management API, and its errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maas.client import MaasClient
from maas.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    UnauthorizedError,
)
from tests.e2e.conftest import LiveServer
from tests.helpers import make_hf_dir

pytestmark = pytest.mark.slow  # a server process and job subprocesses


@pytest.fixture
def client(live: LiveServer) -> Iterator[MaasClient]:
    with MaasClient(live.url, live.key) as c:
        yield c


def test_push_download_aliases_and_lineage_round_trip(client: MaasClient, tmp_path: Path) -> None:
    source = make_hf_dir(tmp_path / "hf")
    sent: list[int] = []
    info = client.push(source, "blob", task="text-classification", on_bytes=sent.append)
    assert (info.ref, info.task) == ("blob:1", "text-classification")
    assert sum(sent) > (source / "config.json").stat().st_size  # the packed tar, in chunks
    pulled = client.download("blob:1", tmp_path / "pulled")
    assert pulled.ref == "blob:1"
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "pulled" / name).read_bytes() == (source / name).read_bytes()
    client.push(source, "blob")
    assert client.set_alias("blob", "production", 1, reason="pin").ref == "blob:1"
    assert client.get_version("blob").version == 1
    assert [e.alias for e in client.alias_history("blob")] == ["production"]
    assert [v.ref for v in client.lineage("blob:2")] == ["blob:2"]
    assert client.get_routing("blob") is None
    with pytest.raises(NotFoundError):
        client.get_routing("no-such-model")


def test_a_job_is_followed_to_its_end_with_its_events_log_and_report(
    client: MaasClient,
) -> None:
    job = client.submit_job("selftest", {"model": "m:1", "sleep": 0.3, "metrics": {"f1": 0.9}})
    assert job["status"] == "queued"
    events: list[dict[str, Any]] = []
    done = client.follow_job(job["id"], events.append)
    assert done["status"] == "succeeded" and done["result_ref"] == "m:2"
    assert events and all(e["type"] == "progress" for e in events)
    assert "created m:2" in client.job_log(job["id"])
    assert client.job_report(job["id"])["metrics"]["f1"] == 0.9
    assert "selftest of m:1" in client.job_report_html(job["id"])
    assert client.get_job(job["id"])["finished_at"] is not None
    listed = client.list_jobs(status="succeeded", kind="selftest")
    assert job["id"] in [j["id"] for j in listed]


def test_cancel_stops_a_running_job_and_a_failed_job_has_no_report(client: MaasClient) -> None:
    job = client.submit_job("selftest", {"model": "m:1", "sleep": 60})
    deadline = time.monotonic() + 60
    while not client.get_job(job["id"])["progress"]:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    cancelled = client.cancel_job(job["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(ConflictError):
        client.cancel_job(job["id"])
    with pytest.raises(NotFoundError):
        client.job_report(job["id"])


def test_datasets_upload_list_and_show(client: MaasClient, reviews_csv: Path) -> None:
    added = client.add_dataset(
        reviews_csv, "reviews", label_map={"pos": "positive"}, splits=(0.6, 0.2, 0.2), seed=1
    )
    assert added["ref"] == "reviews:1"
    assert sorted(added["label_names"]) == ["neg", "positive"]
    assert sum(added["splits"].values()) == 60
    assert "reviews" in [d["name"] for d in client.list_datasets()]
    assert client.get_dataset("reviews:1")["digest"] == added["digest"]
    preview = client.preview_dataset("reviews:1", split="test", limit=3)
    assert preview["dataset"] == "reviews:1" and len(preview["rows"]) == 3
    assert preview["total"] == added["splits"]["test"]
    with pytest.raises(InvalidRequestError, match="pack it first"):
        client.add_dataset(reviews_csv.parent, "folder")
    with pytest.raises(InvalidRequestError, match="unknown source"):
        client.add_dataset("nowhere:data", "reviews")


def test_promote_moves_the_alias_only_when_every_gate_holds(client: MaasClient) -> None:
    job = client.submit_job("selftest", {"model": "m:1", "metrics": {"accuracy": 0.85}})
    ref = client.follow_job(job["id"])["result_ref"]
    assert ref is not None
    with pytest.raises(ConflictError, match=r"accuracy>=0\.9"):
        client.promote(ref, "production", ["accuracy>=0.9"])
    done = client.promote(ref, "staging", ["accuracy>=0.8"], reason="good enough")
    assert done["alias"] == "staging" and done["gates"][0]["passed"] is True
    assert f"{done['version']['model']}:{done['version']['version']}" == ref


def test_keys_are_created_updated_rotated_and_revoked(client: MaasClient, live: LiveServer) -> None:
    created = client.create_key("ci", {"scopes": ["read"], "rpm_limit": 60})
    key_id = created["info"]["id"]
    assert created["key"].startswith("maas-sk-")
    with MaasClient(live.url, created["key"]) as reader:
        assert isinstance(reader.list_models(), list)
    updated = client.update_key(key_id, {"rpm_limit": None, "owner": "team-a"})
    assert (updated["rpm_limit"], updated["owner"]) == (None, "team-a")
    assert client.get_key(key_id)["owner"] == "team-a"
    assert key_id in [k["id"] for k in client.list_keys()]
    rotated = client.rotate_key(key_id)
    assert rotated["info"]["rotated_from"] == key_id
    with MaasClient(live.url, created["key"]) as old, pytest.raises(UnauthorizedError):
        old.list_models()
    assert client.revoke_key(rotated["info"]["id"])["revoked_at"] is not None


def test_usage_audit_and_feedback_reads(client: MaasClient) -> None:
    report = client.usage(group_by="route")
    assert report["group_by"] == "route" and isinstance(report["data"], list)
    client.create_model("audited", "tensor", description="for the audit log")
    deadline = time.monotonic() + 30  # the entry is written just after the answer is sent
    while not (entries := client.list_audit(action="model.create", limit=5)):
        assert time.monotonic() < deadline, "no model.create entry"
        time.sleep(0.05)
    assert entries and all(e["action"] == "model.create" for e in entries)
    first, second = client.list_audit(limit=2)
    assert client.list_audit(after_id=first["id"], limit=1) == [second]
    client.delete_model("audited")
    verified = client.verify_audit()
    assert verified["ok"] is True and verified["checked"] >= len(entries)
    monitoring = client.monitoring("m")
    assert monitoring["model"] == "m" and monitoring["versions"] == []
    with pytest.raises(NotFoundError, match="no recorded prediction"):
        client.post_feedback("pred-unknown", label="pos")
    with pytest.raises(InvalidRequestError):
        client.export_feedback("m", "m-feedback")


def test_errors_are_the_servers_types(client: MaasClient, live: LiveServer) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        client.get_model("nope")
    with pytest.raises(NotFoundError):
        client.get_job("no-such-job")
    with pytest.raises(InvalidRequestError):
        client.submit_job("juggle", {})
    with MaasClient(live.url, "maas-sk-wrong") as stranger, pytest.raises(UnauthorizedError):
        stranger.list_jobs()
