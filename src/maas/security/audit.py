"""The audit log: an append-only, hash-chained record of management actions.

Each entry stores ``hash = sha256(prev_hash || canonical_json(entry))`` where
``prev_hash`` is the hash of the entry before it (64 zeros for the first). An
edited, deleted, inserted or reordered entry therefore breaks the chain at a
point :meth:`AuditLog.verify` can name.

What the chain does *not* stop: someone with write access to the database can
rewrite every entry and recompute every hash, or drop entries from the end.
Anchoring the head hash elsewhere (``VerifyReport.head_hash``) closes that gap;
see ``docs/audit.md``.

Appends are serialised so the chain never forks: one write transaction reads
the last hash and inserts the next entry. On SQLite ``Database.write`` begins
with ``BEGIN IMMEDIATE``, which takes the write lock up front; on PostgreSQL a
transaction-level advisory lock does the same job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from maas.errors import InvalidRequestError
from maas.registry.db import Database
from maas.registry.models import AuditRow

GENESIS_HASH = "0" * 64
MAX_LIST_LIMIT = 1000
# Key of the PostgreSQL advisory lock that serialises appends ("maas-aud" in ASCII);
# distinct from the one migrations take.
PG_APPEND_LOCK = 0x6D6161732D617564
# Column widths of ``audit_log``; values are clipped *before* hashing so the
# stored text is exactly the hashed text on every database.
_WIDTHS = {"actor": 160, "action": 64, "target": 256, "source": 64, "result": 32}
_VERIFY_BATCH = 500


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    ts: datetime
    actor: str
    action: str
    target: str
    source: str | None
    result: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class VerifyReport(BaseModel):
    """The outcome of walking the whole chain.

    ``checked`` counts the entries examined (including the first bad one).
    ``head_id``/``head_hash`` name the newest entry when the chain is intact;
    export ``head_hash`` somewhere the database's writers cannot reach.
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    checked: int
    first_bad_id: int | None
    reason: str
    head_id: int | None = None
    head_hash: str | None = None


def as_utc(value: datetime) -> datetime:
    """Aware UTC; naive values (SQLite hands those back) are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_utc(value: datetime) -> str:
    """``2026-01-02T03:04:05.000006+00:00``: one spelling of one instant."""
    return as_utc(value).isoformat(timespec="microseconds")


def normalise(value: Any) -> Any:
    """Plain JSON values only: datetimes as UTC ISO strings, tuples as lists, str keys."""
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise InvalidRequestError(
        f"audit details must be JSON values, not {type(value).__name__}", param="details"
    )


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same bytes for the same content, anywhere."""
    return json.dumps(
        normalise(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def entry_hash(
    prev_hash: str,
    *,
    ts: datetime,
    actor: str,
    action: str,
    target: str,
    source: str | None,
    result: str,
    details: Mapping[str, Any],
) -> str:
    body = canonical_json(
        {
            "ts": ts,
            "actor": actor,
            "action": action,
            "target": target,
            "source": source,
            "result": result,
            "details": details,
        }
    )
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def _row_hash(row: AuditRow) -> str:
    return entry_hash(
        row.prev_hash,
        ts=row.ts,
        actor=row.actor,
        action=row.action,
        target=row.target,
        source=row.source,
        result=row.result,
        details=row.details or {},
    )


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        ts=as_utc(row.ts),
        actor=row.actor,
        action=row.action,
        target=row.target,
        source=row.source,
        result=row.result,
        details=row.details or {},
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _clip(field: str, value: str) -> str:
    return value[: _WIDTHS[field]]


class AuditLog:
    """Append, query and verify the audit chain stored in ``audit_log``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def append(
        self,
        actor: str,
        action: str,
        target: str,
        *,
        source: str | None = None,
        result: str = "ok",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        actor = _clip("actor", actor)
        action = _clip("action", action)
        target = _clip("target", target)
        source = None if source is None else _clip("source", source)
        result = _clip("result", result)
        # Store the normalised form: what comes back from the database then
        # hashes to exactly the bytes hashed here.
        clean_details: dict[str, Any] = normalise(dict(details or {}))
        # Both SQLite and PostgreSQL keep microseconds: no rounding between them.
        ts = datetime.now(UTC)
        with self._db.write() as s:
            self._lock_chain(s)
            prev = s.scalar(select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1))
            prev_hash = prev or GENESIS_HASH
            digest = entry_hash(
                prev_hash,
                ts=ts,
                actor=actor,
                action=action,
                target=target,
                source=source,
                result=result,
                details=clean_details,
            )
            row = AuditRow(
                ts=ts,
                actor=actor,
                action=action,
                target=target,
                source=source,
                result=result,
                details=clean_details,
                prev_hash=prev_hash,
                hash=digest,
            )
            s.add(row)
            s.flush()
            return _entry(row)

    def _lock_chain(self, session: Session) -> None:
        # SQLite: BEGIN IMMEDIATE (Database.write) already holds the write lock.
        if self._db.engine.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_APPEND_LOCK})

    def list(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after_id: int | None = None,
    ) -> list[AuditEntry]:
        """Entries oldest first; page with ``after_id`` = the last id of the previous page."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(f"limit must be 1..{MAX_LIST_LIMIT}", param="limit")
        query: Select[AuditRow] = select(AuditRow).order_by(AuditRow.id).limit(limit)
        if actor is not None:
            query = query.where(AuditRow.actor == actor)
        if action is not None:
            query = query.where(AuditRow.action == action)
        # Timestamps are stored in UTC; SQLite compares them as text, so the
        # bounds must be UTC too.
        if since is not None:
            query = query.where(AuditRow.ts >= as_utc(since))
        if until is not None:
            query = query.where(AuditRow.ts < as_utc(until))
        if after_id is not None:
            query = query.where(AuditRow.id > after_id)
        with self._db.read() as s:
            return [_entry(row) for row in s.scalars(query)]

    def head(self) -> AuditEntry | None:
        with self._db.read() as s:
            row = s.scalar(select(AuditRow).order_by(AuditRow.id.desc()).limit(1))
            return None if row is None else _entry(row)

    def verify(self) -> VerifyReport:
        """Recompute every hash in id order; stop at the first entry that does not fit."""
        expected_prev = GENESIS_HASH
        checked = 0
        last_id: int | None = None
        with self._db.read() as s:
            # Keyset pages rather than a streaming cursor: flat memory on a long
            # log and no server-side cursor left open when we stop early.
            while True:
                query = select(AuditRow).order_by(AuditRow.id).limit(_VERIFY_BATCH)
                if last_id is not None:
                    query = query.where(AuditRow.id > last_id)
                batch = s.scalars(query).all()
                if not batch:
                    break
                for row in batch:
                    checked += 1
                    problem = None
                    if row.prev_hash != expected_prev:
                        problem = (
                            "prev_hash does not match the entry before it "
                            "(an entry was deleted, inserted or reordered)"
                        )
                    elif _row_hash(row) != row.hash:
                        problem = "hash does not match its content (the entry was edited)"
                    if problem is not None:
                        return VerifyReport(
                            ok=False,
                            checked=checked,
                            first_bad_id=row.id,
                            reason=f"entry {row.id}: {problem}",
                        )
                    expected_prev = row.hash
                    last_id = row.id
                s.expunge_all()
        return VerifyReport(
            ok=True,
            checked=checked,
            first_bad_id=None,
            reason=f"chain intact: {checked} entries",
            head_id=last_id,
            head_hash=expected_prev,
        )
