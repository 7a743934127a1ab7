"""Per-key request and token rate limits (RPM / TPM) with the ``limits`` library.

Moving one-minute windows, kept in process memory by default or in Redis when
``MAAS_REDIS_URL`` is set (then every server process shares them). The async
strategies keep the event loop free while Redis answers.

Requests are counted when they start. Tokens are counted after the fact, when
the real prompt + completion counts are known; before a request runs, the
limiter only checks that the window still has room for what the request may
use (``max_tokens``, or one token). A request that uses more than the room
left consumes what remains, so the next request waits for the window to move.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from typing import Protocol

from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from maas.errors import RateLimitedError

WINDOW_SECONDS = 60
RATE_WORDS = ("limit", "remaining", "reset")  # x-ratelimit-<word>-<requests|tokens>


@dataclass(frozen=True, slots=True)
class WindowState:
    limit: int
    remaining: int
    reset_seconds: float  # until the window has room for one more unit


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``20ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def rate_headers(requests: WindowState | None, tokens: WindowState | None) -> dict[str, str]:
    """``x-ratelimit-*`` headers in the names and formats OpenAI uses."""
    headers: dict[str, str] = {}
    for kind, state in (("requests", requests), ("tokens", tokens)):
        if state is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, state.remaining))
        headers[f"x-ratelimit-reset-{kind}"] = _duration(state.reset_seconds)
    return headers


class Limiter(Protocol):
    """What admission needs of a limiter: this module's ``RateLimiter``, or with
    ``maas serve --workers N`` and no Redis, the engine process's one reached over IPC
    (``serving.engine.client.RemoteLimiter``), so that every worker counts in one window."""

    async def acquire_request(self, key_id: int, limit: int) -> WindowState: ...

    async def check_tokens(self, key_id: int, limit: int, needed: int) -> WindowState: ...

    async def record_tokens(self, key_id: int, limit: int, used: int) -> WindowState: ...

    async def acquire_units(
        self, key_id: int, kind: str, limit: int, units: int
    ) -> WindowState: ...

    async def close(self) -> None: ...


class RateLimiter:
    def __init__(self, redis_url: str | None = None, namespace: str = "maas") -> None:
        if redis_url:
            scheme, sep, rest = redis_url.partition("://")
            uri = f"async+{scheme}{sep}{rest}" if not scheme.startswith("async+") else redis_url
        else:
            uri = "async+memory://"
        self.backend = "redis" if redis_url else "memory"
        options = {"key_prefix": namespace} if redis_url else {}
        self._storage = storage_from_string(uri, **options)
        self._limiter = MovingWindowRateLimiter(self._storage)

    async def _state(self, item: RateLimitItemPerMinute, *ids: str) -> WindowState:
        stats = await self._limiter.get_window_stats(item, *ids)
        return WindowState(item.amount, stats.remaining, max(0.0, stats.reset_time - time.time()))

    async def acquire_request(self, key_id: int, limit: int) -> WindowState:
        """Count one request against the key's RPM, or raise 429 with Retry-After."""
        item = RateLimitItemPerMinute(limit)
        ids = ("rpm", str(key_id))
        if not await self._limiter.hit(item, *ids):
            state = await self._state(item, *ids)
            raise RateLimitedError(
                f"rate limit reached: {limit} requests per minute for this key; "
                f"retry in {_duration(state.reset_seconds)}",
                retry_after=state.reset_seconds,
                headers=rate_headers(state, None),
            )
        return await self._state(item, *ids)

    async def check_tokens(self, key_id: int, limit: int, needed: int) -> WindowState:
        """Refuse (429) when the key's TPM window lacks room for ``needed`` tokens."""
        item = RateLimitItemPerMinute(limit)
        ids = ("tpm", str(key_id))
        state = await self._state(item, *ids)
        if needed > limit:
            raise RateLimitedError(
                f"this request may use {needed} tokens, more than the key's whole limit of "
                f"{limit} tokens per minute; lower max_tokens",
                param="max_tokens",
                headers=rate_headers(None, state),
            )
        if state.remaining < needed:
            raise RateLimitedError(
                f"token rate limit reached: {limit} tokens per minute for this key "
                f"({state.remaining} left, this request may use {needed}); "
                f"retry in {_duration(state.reset_seconds)}",
                retry_after=state.reset_seconds,
                headers=rate_headers(None, state),
            )
        return state

    async def record_tokens(self, key_id: int, limit: int, used: int) -> WindowState:
        """Account tokens a finished request used (capped at what the window has left)."""
        item = RateLimitItemPerMinute(limit)
        ids = ("tpm", str(key_id))
        if used > 0:
            state = await self._state(item, *ids)
            cost = min(used, state.remaining)
            if cost > 0:
                await self._limiter.hit(item, *ids, cost=cost)
        return await self._state(item, *ids)

    async def acquire_units(self, key_id: int, kind: str, limit: int, units: int) -> WindowState:
        """Count ``units`` of ``kind`` (e.g. images) against the key's per-minute window.

        All or nothing: a request that needs more than the window has left is refused
        (429 with Retry-After) and counts nothing.
        """
        item = RateLimitItemPerMinute(limit)
        ids = (kind, str(key_id))
        if units > limit:
            raise RateLimitedError(
                f"this request makes {units} {kind}, more than the key's whole limit of "
                f"{limit} {kind} per minute",
            )
        if not await self._limiter.hit(item, *ids, cost=units):
            state = await self._state(item, *ids)
            raise RateLimitedError(
                f"rate limit reached: {limit} {kind} per minute for this key "
                f"({state.remaining} left, this request makes {units}); "
                f"retry in {_duration(state.reset_seconds)}",
                retry_after=state.reset_seconds,
            )
        return await self._state(item, *ids)

    async def close(self) -> None:
        """Close Redis connections (the memory backend holds none)."""
        # limits' async storage has no close(); its coredis client's pool does.
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            result = pool.disconnect()
            if inspect.isawaitable(result):
                await result
