"""Monthly quotas counted in a real Redis, shared by several counters (instances)."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime

import coredis
import pytest

from maas.errors import QuotaExceededError
from maas.registry.store import Registry
from maas.security.quotas import month_start
from maas.security.quotas_redis import RedisQuotas
from maas.security.usage import UsageEvent, UsageRecorder

REDIS_URL = os.environ.get("MAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module", autouse=True)
def redis_reachable() -> None:
    async def ping() -> None:
        await coredis.Redis.from_url(REDIS_URL).ping()

    try:
        asyncio.run(ping())
    except Exception as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL} (set MAAS_TEST_REDIS_URL): {exc}")


def _quotas(registry: Registry, namespace: str) -> RedisQuotas:
    return RedisQuotas(registry.db, REDIS_URL, namespace=namespace)


def test_a_request_quota_holds_across_two_counters(registry: Registry) -> None:
    namespace = f"test-{uuid.uuid4().hex}"

    async def scenario() -> list[str]:
        a, b = _quotas(registry, namespace), _quotas(registry, namespace)
        outcomes = []
        try:
            for i in range(6):
                counter = (a, b)[i % 2]
                try:
                    await counter.check(7, request_quota=4, token_quota=None)
                except QuotaExceededError as exc:
                    outcomes.append(str(exc))
                    continue
                counter.count(7, 0, datetime.now(UTC))
                await counter.counted()
                outcomes.append("ok")
        finally:
            await a.close()
            await b.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes[:4] == ["ok"] * 4
    assert all(o.startswith("monthly request quota of 4 used up") for o in outcomes[4:])


def test_the_counter_is_seeded_from_the_usage_table_and_unwritten_records(
    registry: Registry,
) -> None:
    namespace = f"test-{uuid.uuid4().hex}"

    async def scenario() -> None:
        recorder = UsageRecorder(registry.db, watts=35.0)
        for _ in range(3):
            recorder.record(UsageEvent(key_id=9, model="m", version=1, route="r", status=200))
        await recorder.flush()  # three rows in the table
        recorder.record(
            UsageEvent(key_id=9, model="m", version=1, route="r", status=200, prompt_tokens=5)
        )  # one queued, not written
        quotas = RedisQuotas(
            registry.db, REDIS_URL, namespace=namespace, unwritten=recorder.unwritten
        )
        try:
            await quotas.check(9, request_quota=5, token_quota=None)
            with pytest.raises(QuotaExceededError):
                await quotas.check(9, request_quota=4, token_quota=None)
            with pytest.raises(QuotaExceededError, match=r"token quota of 7 used up \(5 used\)"):
                await quotas.check(9, request_quota=None, token_quota=7, tokens_needed=3)
            await quotas.check(9, request_quota=None, token_quota=7, tokens_needed=2)
        finally:
            await quotas.close()
            await recorder.close()

    asyncio.run(scenario())


def test_a_second_seed_does_not_overwrite_a_counter_that_has_counted(registry: Registry) -> None:
    namespace = f"test-{uuid.uuid4().hex}"

    async def scenario() -> tuple[str | None, str | None]:
        a, b = _quotas(registry, namespace), _quotas(registry, namespace)
        try:
            await a.check(3, request_quota=10, token_quota=None)
            a.count(3, 4, datetime.now(UTC))
            await a.counted()
            month = month_start(datetime.now(UTC))
            name = a.counter_key(3, month)
            # b seeds from the (empty) table, but the counter exists: it keeps a's count.
            await b._seed_counter(name, 3, month)
            client = coredis.Redis.from_url(REDIS_URL, decode_responses=True)
            values = await client.hmget(name, ["requests", "tokens"])
            ttl = await client.ttl(name)
            assert 0 < ttl <= 33 * 86400
            return values[0], values[1]
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(scenario()) == ("1", "4")


def test_a_key_without_a_quota_costs_no_redis_call_when_counted(registry: Registry) -> None:
    namespace = f"test-{uuid.uuid4().hex}"

    async def scenario() -> bool:
        quotas = _quotas(registry, namespace)
        try:
            await quotas.check(5, request_quota=None, token_quota=None)
            quotas.count(5, 10, datetime.now(UTC))
            await quotas.counted()
            client = coredis.Redis.from_url(REDIS_URL, decode_responses=True)
            name = quotas.counter_key(5, month_start(datetime.now(UTC)))
            return bool(await client.exists([name]))
        finally:
            await quotas.close()

    assert asyncio.run(scenario()) is False
