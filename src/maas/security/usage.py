"""Usage metering: one record per served request, written in batches off the request path.

``UsageRecorder.record`` only appends to a list (no I/O, no await); its
``BatchWriter`` (``registry.batch_writer``, which says when and why) writes the
pending records in one transaction on a worker thread. Each record
is also counted against the key's monthly quotas (``security.quotas``: in this
process, or in the engine that every worker shares).

Energy is an estimate: compute seconds x ``MAAS_ENERGY_WATTS``, the power the
operator attributes to one busy compute slot. It is not a measurement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import insert, select, update

from maas.errors import InvalidRequestError
from maas.registry.batch_writer import BatchWriter
from maas.registry.db import Database
from maas.registry.models import ApiKeyRow, UsageRow
from maas.security.quotas import QuotaCounters, Quotas

log = logging.getLogger(__name__)

GroupBy = Literal["day", "month", "model", "key", "route", "status"]
GROUP_BY: tuple[str, ...] = ("day", "month", "model", "key", "route", "status")
_SUMS = (
    "prompt_tokens",
    "completion_tokens",
    "items",
    "compute_seconds",
    "queue_seconds",
    "bytes_in",
    "bytes_out",
    "energy_joules",
    "audio_seconds",
    "images",
)


@dataclass(slots=True)
class UsageEvent:
    key_id: int | None
    model: str
    version: int | None
    route: str
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    items: int = 0
    compute_seconds: float = 0.0
    queue_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    # Usage units of the media routes (speech heard or spoken, images made).
    audio_seconds: float = 0.0
    images: int = 0
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_EVENT_FIELDS = tuple(f.name for f in fields(UsageEvent))


class UsageRecorder:
    def __init__(
        self,
        db: Database,
        *,
        watts: float,
        quotas: Quotas | None = None,
        flush_seconds: float = 0.5,
    ) -> None:
        self._db = db
        self.watts = watts
        self.flush_seconds = flush_seconds
        # Written in batches off the request path (~18 us a record with SQLAlchemy here).
        self._writer = BatchWriter(self._write, name="usage writer", flush_seconds=flush_seconds)
        # The monthly quota counters: this process's own unless given (the engine's).
        self.quotas: Quotas = quotas or QuotaCounters(db, unwritten=self.unwritten)

    # -------------------------------------------------------------- recording

    def record(self, event: UsageEvent) -> None:
        """Queue one record; never blocks and never raises into the request."""
        self._writer.add(event)
        if event.key_id is not None:
            self.quotas.count(event.key_id, event.tokens, event.ts)

    @property
    def pending(self) -> list[UsageEvent]:
        """Records queued and not written yet."""
        return self._writer.pending

    async def flush(self) -> int:
        """Write everything pending now; returns how many records were written."""
        return await self._writer.flush()

    def _write(self, batch: list[UsageEvent]) -> None:
        # One executemany INSERT and one UPDATE per key, not an ORM object per row:
        # this runs on a worker thread but holds the GIL while it builds rows, and
        # at ~1000 requests/s the ORM path stalled the event loop for tens of ms.
        rows: list[dict[str, Any]] = []
        last_used: dict[int, datetime] = {}
        for event in batch:
            # Shallow, not dataclasses.asdict: asdict deep-copies every field (the
            # datetime too) and was 80 % of this method's time.
            values = {name: getattr(event, name) for name in _EVENT_FIELDS}
            values["energy_joules"] = event.compute_seconds * self.watts
            rows.append(values)
            if event.key_id is not None:
                last_used[event.key_id] = max(last_used.get(event.key_id, event.ts), event.ts)
        with self._db.write() as s:
            s.execute(insert(UsageRow), rows)
            for key_id, when in last_used.items():
                s.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=when))

    async def close(self) -> None:
        await self._writer.close()

    def unwritten(self, key_id: int, since: datetime) -> tuple[int, int]:
        """Requests and tokens of ``key_id`` since ``since`` queued but not written yet."""
        events = [e for e in self.pending if e.key_id == key_id and e.ts >= since]
        return len(events), sum(e.tokens for e in events)


def aggregate(
    db: Database,
    *,
    key_id: int | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: str = "day",
) -> list[dict[str, Any]]:
    """Sums of usage per group, oldest/smallest group first (``key_name`` too by key)."""
    if group_by not in GROUP_BY:
        raise InvalidRequestError(
            f"group_by must be one of {', '.join(GROUP_BY)}", param="group_by"
        )
    columns = [
        UsageRow.ts,
        UsageRow.key_id,
        UsageRow.model,
        UsageRow.route,
        UsageRow.status,
        *(getattr(UsageRow, name) for name in _SUMS),
    ]
    query = select(*columns)
    if key_id is not None:
        query = query.where(UsageRow.key_id == key_id)
    if model is not None:
        query = query.where(UsageRow.model == model)
    if since is not None:
        query = query.where(UsageRow.ts >= since)
    if until is not None:
        query = query.where(UsageRow.ts < until)
    # Grouped in Python: date truncation differs between SQLite and PostgreSQL,
    # and the filtered rows of one report are few enough.
    groups: dict[Any, dict[str, Any]] = {}
    with db.read() as s:
        for row in s.execute(query):
            ts = row.ts if row.ts.tzinfo else row.ts.replace(tzinfo=UTC)
            group: Any = {
                "day": ts.strftime("%Y-%m-%d"),
                "month": ts.strftime("%Y-%m"),
                "model": row.model,
                "key": row.key_id,
                "route": row.route,
                "status": row.status,
            }[group_by]
            entry = groups.setdefault(
                group, {group_by: group, "requests": 0, **dict.fromkeys(_SUMS, 0)}
            )
            entry["requests"] += 1
            for name in _SUMS:
                entry[name] += getattr(row, name)
        if group_by == "key":  # ids alone mean little to a reader: add each key's name
            ids = [k for k in groups if k is not None]
            query_names = select(ApiKeyRow.id, ApiKeyRow.name).where(ApiKeyRow.id.in_(ids))
            names = {key_id: name for key_id, name in s.execute(query_names)}
            for key, entry in groups.items():
                entry["key_name"] = names.get(key)
    out = [groups[k] for k in sorted(groups, key=lambda g: (g is None, str(g)))]
    for entry in out:
        entry["total_tokens"] = entry["prompt_tokens"] + entry["completion_tokens"]
        for name in ("compute_seconds", "queue_seconds", "energy_joules", "audio_seconds"):
            entry[name] = round(entry[name], 6)
    return out
