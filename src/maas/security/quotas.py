"""Monthly quotas: per-key counters of this month's requests and tokens.

Admission checks a key's quotas before a request runs (``check``); settlement
counts each finished request (``count``). The counters live in memory, seeded
once per key and month from the usage table, so neither step does I/O on the
request path.

Where the counters live decides who sees whose requests, exactly as for the
rate-limit windows (``security.limits``):

* ``MAAS_REDIS_URL`` set: in Redis, for every process of every instance
  (``security.quotas_redis.RedisQuotas``, same verdict: ``refuse_if_used_up``);

* one serving process: ``QuotaCounters`` in it; its seed includes the usage
  records it has not written yet (``unwritten``);
* ``maas serve --workers N``: one ``QuotaCounters`` in the engine process, and
  each worker's ``RemoteQuotas`` asks it — so a key's quota holds across all
  workers, bursts included (each worker counting its own would let a key use
  up to N times its quota). An engine that restarts seeds again from the table:
  the records workers have not flushed yet (at most ``flush_seconds`` of them)
  are missed until next month's counters, an undercount, never a double count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio.to_thread
from sqlalchemy import func, select

from maas.errors import QuotaExceededError
from maas.registry.db import Database
from maas.registry.models import UsageRow


def month_start(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(month: datetime) -> datetime:
    return (month + timedelta(days=32)).replace(day=1)


def refuse_if_used_up(
    month: datetime,
    requests: int,
    tokens: int,
    *,
    request_quota: int | None,
    token_quota: int | None,
    tokens_needed: int,
) -> None:
    """Raise 429 ``insufficient_quota`` when ``requests``/``tokens`` used this month
    leave no room; the one verdict of every counter store (memory, engine, Redis)."""
    now = datetime.now(UTC)
    next_month = next_month_start(month)
    resets = f"it resets on {next_month:%Y-%m-%d} (UTC)"
    if request_quota is not None and requests >= request_quota:
        raise QuotaExceededError(
            f"monthly request quota of {request_quota} used up; {resets}",
            retry_after=(next_month - now).total_seconds(),
        )
    if token_quota is not None and tokens + tokens_needed > token_quota:
        raise QuotaExceededError(
            f"monthly token quota of {token_quota} used up ({tokens} used); {resets}",
            retry_after=(next_month - now).total_seconds(),
        )


def usage_totals(db: Database, key_id: int, since: datetime) -> tuple[int, int]:
    """Requests and tokens of ``key_id`` in the usage table since ``since`` (blocking)."""
    with db.read() as s:
        row = s.execute(
            select(
                func.count(UsageRow.id),
                func.coalesce(func.sum(UsageRow.prompt_tokens + UsageRow.completion_tokens), 0),
            ).where(UsageRow.key_id == key_id, UsageRow.ts >= since)
        ).one()
    return int(row[0]), int(row[1])


class Quotas(Protocol):
    async def check(
        self,
        key_id: int,
        *,
        request_quota: int | None,
        token_quota: int | None,
        tokens_needed: int = 0,
    ) -> None:
        """Raise 429 ``insufficient_quota`` when this month's quota is used up."""

    def count(self, key_id: int, tokens: int, when: datetime) -> None:
        """Count one finished request of ``key_id`` and its tokens."""


class QuotaCounters:
    def __init__(
        self,
        db: Database,
        unwritten: Callable[[int, datetime], tuple[int, int]] | None = None,
    ) -> None:
        self._db = db
        self._unwritten = unwritten
        # (key id, month start) -> [requests, tokens] this month, once seeded.
        self._month: dict[tuple[int, datetime], list[int]] = {}

    async def check(
        self,
        key_id: int,
        *,
        request_quota: int | None,
        token_quota: int | None,
        tokens_needed: int = 0,
    ) -> None:
        if request_quota is None and token_quota is None:
            return
        now = datetime.now(UTC)
        slot = (key_id, month_start(now))
        counters = self._month.get(slot)
        if counters is None:
            requests, tokens = await anyio.to_thread.run_sync(
                usage_totals, self._db, key_id, slot[1]
            )
            if self._unwritten is not None:
                more_requests, more_tokens = self._unwritten(key_id, slot[1])
                requests, tokens = requests + more_requests, tokens + more_tokens
            # Counted meanwhile (another check seeded it while this one read): keep that.
            counters = self._month.setdefault(slot, [requests, tokens])
        refuse_if_used_up(
            slot[1],
            counters[0],
            counters[1],
            request_quota=request_quota,
            token_quota=token_quota,
            tokens_needed=tokens_needed,
        )

    def count(self, key_id: int, tokens: int, when: datetime) -> None:
        # Only keys with a quota were ever seeded; others cost a dict miss.
        counters = self._month.get((key_id, month_start(when)))
        if counters is not None:
            counters[0] += 1
            counters[1] += tokens
