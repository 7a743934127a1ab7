"""The hash-chained audit log on real SQLite files and PostgreSQL, and ``maas audit``."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

import maas.security.audit as audit_module
from maas.cli.main import app as cli_app
from maas.config import Settings
from maas.errors import InvalidRequestError
from maas.registry.db import Database
from maas.registry.store import Registry
from maas.security.audit import (
    GENESIS_HASH,
    AuditLog,
    canonical_json,
    entry_hash,
)
from tests.pg import fresh_postgres_url

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        yield from fresh_postgres_url()


@pytest.fixture
def chain_registry(database_url: str, tmp_path: Path) -> Iterator[Registry]:
    """A migrated registry (so ``audit_log`` exists) over SQLite or PostgreSQL."""
    reg = Registry(Settings(home=tmp_path / "home", database_url=database_url))
    yield reg
    reg.close()


@pytest.fixture
def audit(chain_registry: Registry) -> AuditLog:
    return AuditLog(chain_registry.db)


def fill(audit: AuditLog, n: int) -> None:
    for i in range(n):
        audit.append(
            f"key:ci#{i % 3}",
            "version.push",
            f"/admin/v1/models/m{i}/versions",
            source="127.0.0.1",
            result="201",
            details={"i": i},
        )


def execute(db: Database, sql: str, **params: object) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(sql), params)


# ------------------------------------------------------------------ the chain


def test_empty_log_verifies_with_the_genesis_hash_as_head(audit: AuditLog) -> None:
    report = audit.verify()
    assert report.ok and report.checked == 0 and report.first_bad_id is None
    assert report.head_id is None and report.head_hash == GENESIS_HASH


def test_a_chain_of_many_appends_verifies(audit: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "_VERIFY_BATCH", 16)  # walk it in many pages
    fill(audit, 150)
    report = audit.verify()
    assert report.ok, report.reason
    assert report.checked == 150 and report.head_id == 150
    entries = audit.list(limit=1000)
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert report.head_hash == entries[-1].hash


def test_each_hash_is_sha256_of_prev_hash_and_the_canonical_entry(audit: AuditLog) -> None:
    fill(audit, 2)
    entry = audit.list()[1]
    body = json.dumps(
        {
            "action": entry.action,
            "actor": entry.actor,
            "details": entry.details,
            "result": entry.result,
            "source": entry.source,
            "target": entry.target,
            "ts": entry.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"),
        },
        separators=(",", ":"),
    ).encode()
    assert entry.hash == hashlib.sha256(entry.prev_hash.encode() + body).hexdigest()


def test_canonical_json_sorts_keys_drops_whitespace_and_normalises_datetimes() -> None:
    local = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    naive = datetime(2026, 1, 2, 3, 4, 5, 6)
    data = {"b": [1, 2.5, None], "a": {"z": local, "y": naive}, 3: "ü"}
    assert (
        canonical_json(data)
        == (
            '{"3":"ü","a":{"y":"2026-01-02T03:04:05.000006+00:00",'
            '"z":"2026-01-02T03:04:05.000000+00:00"},"b":[1,2.5,null]}'
        ).encode()
    )


def test_details_and_timestamps_round_trip_to_the_same_bytes(audit: AuditLog) -> None:
    details = {
        "when": datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=-5))),
        "nested": {"b": [1, 2.5, True, None], "a": "naïve ✓"},
        "float": 0.1,
        "big": 2**53 + 1,
    }
    written = audit.append("key:a#1", "model.update", "/admin/v1/models/m", details=details)
    (read,) = audit.list()
    assert canonical_json(read.details) == canonical_json(details)
    assert read.details["when"] == "2026-03-04T10:06:07.891011+00:00"
    assert read.ts == written.ts and read.ts.tzinfo is not None
    assert read.hash == written.hash
    assert audit.verify().ok


def test_postgres_session_timezone_does_not_change_the_hashes(tmp_path: Path) -> None:
    for url in fresh_postgres_url():
        reg = Registry(Settings(home=tmp_path / "home", database_url=url))
        try:
            fill(AuditLog(reg.db), 5)
        finally:
            reg.close()
        # A reader whose session speaks another time zone gets other datetimes back.
        reader = Database(url + "?options=-c%20timezone%3DAsia/Kolkata")
        try:
            report = AuditLog(reader).verify()
        finally:
            reader.dispose()
        assert report.ok and report.checked == 5, report.reason


def test_values_longer_than_their_columns_are_clipped_before_hashing(audit: AuditLog) -> None:
    entry = audit.append("a" * 500, "b" * 500, "/admin/v1/" + "c" * 500, source="d" * 500)
    assert (len(entry.actor), len(entry.action), len(entry.target), len(entry.source or "")) == (
        160,
        64,
        256,
        64,
    )
    assert audit.verify().ok


def test_details_that_are_not_json_values_are_refused(audit: AuditLog) -> None:
    with pytest.raises(InvalidRequestError):
        audit.append("a", "b", "c", details={"x": object()})
    assert audit.verify().checked == 0


# ----------------------------------------------------------------- tampering


def test_editing_a_target_with_raw_sql_is_reported_at_that_entry(
    audit: AuditLog, chain_registry: Registry
) -> None:
    fill(audit, 10)
    execute(chain_registry.db, "UPDATE audit_log SET target = :t WHERE id = 4", t="/elsewhere")
    report = audit.verify()
    assert not report.ok and report.first_bad_id == 4
    assert "entry 4" in report.reason and "edited" in report.reason
    assert report.head_hash is None


def test_editing_details_with_raw_sql_is_reported_at_that_entry(
    audit: AuditLog, chain_registry: Registry
) -> None:
    fill(audit, 5)
    execute(chain_registry.db, "UPDATE audit_log SET details = :d WHERE id = 2", d='{"i": 99}')
    assert audit.verify().first_bad_id == 2


def test_an_edit_with_a_recomputed_hash_still_breaks_the_next_link(
    audit: AuditLog, chain_registry: Registry
) -> None:
    fill(audit, 6)
    victim = audit.list()[2]
    forged = entry_hash(
        victim.prev_hash,
        ts=victim.ts,
        actor="key:someone-else#9",
        action=victim.action,
        target=victim.target,
        source=victim.source,
        result=victim.result,
        details=victim.details,
    )
    execute(
        chain_registry.db,
        "UPDATE audit_log SET actor = 'key:someone-else#9', hash = :h WHERE id = 3",
        h=forged,
    )
    report = audit.verify()
    assert not report.ok and report.first_bad_id == 4
    assert "prev_hash" in report.reason


def test_deleting_a_middle_entry_is_detected(
    audit: AuditLog, chain_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "_VERIFY_BATCH", 4)  # the gap falls between pages
    fill(audit, 10)
    execute(chain_registry.db, "DELETE FROM audit_log WHERE id = 5")
    report = audit.verify()
    assert not report.ok and report.first_bad_id == 6
    assert "deleted" in report.reason
    assert report.checked == 5


def test_reordering_entries_is_detected(audit: AuditLog, chain_registry: Registry) -> None:
    fill(audit, 6)
    execute(chain_registry.db, "UPDATE audit_log SET id = -1 WHERE id = 3")
    execute(chain_registry.db, "UPDATE audit_log SET id = 3 WHERE id = 4")
    execute(chain_registry.db, "UPDATE audit_log SET id = 4 WHERE id = -1")
    report = audit.verify()
    assert not report.ok and report.first_bad_id == 3


# --------------------------------------------------------------- concurrency


def test_eight_threads_appending_concurrently_keep_one_chain(
    chain_registry: Registry, database_url: str
) -> None:
    # One Database (engine and pool) per thread, like separate processes.
    databases = [Database(database_url) for _ in range(8)]

    def work(n: int) -> None:
        log = AuditLog(databases[n])
        for i in range(25):
            log.append(f"key:t{n}#{n}", "alias.set", f"/admin/v1/models/m/aliases/a{i}")

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
    finally:
        for db in databases:
            db.dispose()
    audit = AuditLog(chain_registry.db)
    report = audit.verify()
    assert report.ok, report.reason
    assert report.checked == 200
    assert [e.id for e in audit.list(limit=1000)] == list(range(1, 201))


# --------------------------------------------------------------------- query


def test_list_filters_and_pages_with_after_id(audit: AuditLog) -> None:
    fill(audit, 9)
    assert [e.id for e in audit.list(actor="key:ci#1")] == [2, 5, 8]
    audit.append("key:x#7", "alias.set", "/admin/v1/models/m/aliases/production")
    assert [e.id for e in audit.list(action="alias.set")] == [10]
    page1 = audit.list(limit=4)
    page2 = audit.list(limit=4, after_id=page1[-1].id)
    assert [e.id for e in page1 + page2] == list(range(1, 9))
    newest = audit.list()[-1].ts
    assert [e.id for e in audit.list(since=newest)] == [10]
    assert len(audit.list(until=newest)) == 9
    # Bounds in another time zone mean the same instant.
    assert [e.id for e in audit.list(since=newest.astimezone(timezone(timedelta(hours=9))))] == [10]
    with pytest.raises(InvalidRequestError):
        audit.list(limit=0)


# ----------------------------------------------------------------------- CLI


def maas(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(cli_app, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_verify_exits_0_when_intact_and_1_naming_the_entry_after_tampering(
    home: Path,
) -> None:
    code, out, _ = maas(home, "audit", "verify")
    assert code == 0 and "intact: 0 entries" in out
    reg = Registry(Settings(home=home))
    try:
        fill(AuditLog(reg.db), 4)
        code, out, _ = maas(home, "audit", "verify")
        assert code == 0 and "intact: 4 entries" in out
        execute(reg.db, "UPDATE audit_log SET result = '200' WHERE id = 2")
    finally:
        reg.close()
    code, out, err = maas(home, "audit", "verify")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "entry 2" in err
    code, out, _ = maas(home, "audit", "verify", "--json")
    assert code == 1 and json.loads(out)["first_bad_id"] == 2


def test_cli_list_filters_and_prints_json(home: Path) -> None:
    reg = Registry(Settings(home=home))
    try:
        fill(AuditLog(reg.db), 6)
    finally:
        reg.close()
    code, out, _ = maas(home, "audit", "list", "--actor", "key:ci#0", "--json")
    assert code == 0
    assert [e["id"] for e in json.loads(out)] == [1, 4]
    code, out, _ = maas(home, "audit", "list", "--limit", "2", "--after-id", "3", "--json")
    assert [e["id"] for e in json.loads(out)] == [4, 5]
    code, out, _ = maas(home, "audit", "list")
    assert code == 0 and "version.push" in out and "/admin/v1/models/m5/versions" in out
