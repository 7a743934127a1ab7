"""Monthly quotas counted in Redis: one set of counters for every instance.

With ``MAAS_REDIS_URL`` set, several ``maas serve`` instances (and the HTTP
workers of each) share one counter per key and month, so a key's quota holds
however its requests are spread. The semantics are those of
``security.quotas.QuotaCounters``:

* a key's counter is seeded once per month from the usage table (plus the
  records this process has queued but not written), the first time a request
  of that key with a quota is checked anywhere. Seeding is one Lua script that
  writes only if the counter does not exist yet, so two instances seeding at
  the same moment cannot overwrite a counter that has already counted;
* a finished request is counted (``HINCRBY``) only into a counter that
  exists — the seed reads the table, which will hold that request's record. A
  request that finishes while another instance reads the table to seed can
  therefore be missed: an undercount of at most the requests in that window,
  never a double count;
* a request is counted when it finishes, so requests admitted at the same
  moment can overshoot a quota by how many were in flight.

Counting must not block the request path: ``count`` is synchronous and
starts the Redis call as a task; ``close`` waits for those still running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import coredis
from coredis.exceptions import RedisError

from maas.errors import UnavailableError
from maas.registry.db import Database
from maas.security.quotas import month_start, next_month_start, refuse_if_used_up, usage_totals

log = logging.getLogger(__name__)

# KEYS[1]: the counter; ARGV: requests, tokens, expiry (unix seconds).
# Returns the counter as it is after the call: the seed, or what another seeder wrote.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'requests', ARGV[1], 'tokens', ARGV[2])
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
end
return redis.call('HMGET', KEYS[1], 'requests', 'tokens')
"""
# KEYS[1]: the counter; ARGV: tokens. Counts into a seeded counter only.
_COUNT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'requests', 1)
  redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
end
return 0
"""
# Counters outlive their month by this much (a request finishing just after midnight
# still finds its month's counter); then Redis drops them.
KEEP_AFTER_MONTH = timedelta(days=2)


class RedisQuotas:
    def __init__(
        self,
        db: Database,
        redis_url: str,
        *,
        namespace: str = "maas",
        unwritten: Callable[[int, datetime], tuple[int, int]] | None = None,
    ) -> None:
        self._db = db
        self._unwritten = unwritten
        self._namespace = namespace
        self._redis: coredis.Redis[str] = coredis.Redis.from_url(redis_url, decode_responses=True)
        self._seed = self._redis.register_script(_SEED)
        self._count = self._redis.register_script(_COUNT)
        # Counters this process has checked (so they exist): only those are counted,
        # so a key without a quota costs no Redis call when its requests finish.
        self._quota_slots: set[tuple[int, datetime]] = set()
        self._counting: set[asyncio.Task[Any]] = set()

    def counter_key(self, key_id: int, month: datetime) -> str:
        return f"{self._namespace}:quota:{key_id}:{month:%Y-%m}"

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
        month = month_start(datetime.now(UTC))
        name = self.counter_key(key_id, month)
        try:
            values = await self._redis.hmget(name, ["requests", "tokens"])
            if values[0] is None:
                values = await self._seed_counter(name, key_id, month)
        except RedisError as exc:
            raise UnavailableError(
                "the quota counters (Redis, MAAS_REDIS_URL) did not answer; retry"
            ) from exc
        self._quota_slots.add((key_id, month))
        refuse_if_used_up(
            month,
            int(values[0] or 0),
            int(values[1] or 0),
            request_quota=request_quota,
            token_quota=token_quota,
            tokens_needed=tokens_needed,
        )

    async def _seed_counter(self, name: str, key_id: int, month: datetime) -> Any:
        requests, tokens = await anyio.to_thread.run_sync(usage_totals, self._db, key_id, month)
        if self._unwritten is not None:
            more_requests, more_tokens = self._unwritten(key_id, month)
            requests, tokens = requests + more_requests, tokens + more_tokens
        expires = int((next_month_start(month) + KEEP_AFTER_MONTH).timestamp())
        return await self._seed(keys=[name], args=[requests, tokens, expires])

    def count(self, key_id: int, tokens: int, when: datetime) -> None:
        month = month_start(when)
        if (key_id, month) not in self._quota_slots:
            return
        task = asyncio.get_running_loop().create_task(
            self._count_one(self.counter_key(key_id, month), tokens)
        )
        self._counting.add(task)
        task.add_done_callback(self._counting.discard)

    async def _count_one(self, name: str, tokens: int) -> None:
        try:
            await self._count(keys=[name], args=[tokens])
        except RedisError:
            # The usage record is written regardless; the counter undercounts until it
            # expires (next month counts from the table again).
            log.warning("counting a request against its quota in Redis failed", exc_info=True)

    async def counted(self) -> None:
        """Wait until the counts started so far have reached Redis."""
        if self._counting:
            await asyncio.gather(*self._counting, return_exceptions=True)

    async def close(self) -> None:
        """Wait for the counts still on their way, then close the connections."""
        await self.counted()
        self._redis.connection_pool.disconnect()
