"""Admission: the one decision taken before a request runs, and its settlement after.

``authenticate`` then ``authorize`` run for every non-public route, in this order:

1. authenticate the key from the in-process cache (``KeyStore.cached``), or
   from the database on a miss, on a worker thread;
2. the route's rule (scopes, metered or not) comes from the caller's route
   table; a route without a rule is refused (fail closed);
3. scopes, then the key's model allowlist for models named in the path;
4. metered routes only (inference): RPM, room for one token in the TPM window,
   and the monthly quotas.

Discovery and management routes are not metered: listing models does not use
up a key's requests per minute (an ``openai`` client lists models on its own).

``settle`` runs after a metered response went out: it queues one usage record
(no I/O on the request path) and accounts the tokens used against TPM.

With the trust layer switched off (``enabled=False``, a benchmark and
local-development switch that ``Settings`` allows only on a loopback bind), the
caller admits everything with no key and ``settle`` records nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio.to_thread

from maas.errors import ForbiddenError, NotFoundError, UnauthorizedError
from maas.security.keys import KeyInfo, KeyStore
from maas.security.limits import Limiter, rate_headers
from maas.security.pii import PiiPolicy
from maas.security.usage import UsageEvent, UsageRecorder

log = logging.getLogger(__name__)

MISSING_KEY = (
    "missing API key: send 'Authorization: Bearer maas-sk-...' "
    "(the bootstrap admin key is in MAAS_HOME/admin.key)"
)


# A key's policy string, parsed once: read on every request of that key (frozen result).
_policy = functools.lru_cache(maxsize=256)(PiiPolicy.parse)


@dataclass(frozen=True, slots=True)
class RouteRule:
    """What a route requires: any one of ``scopes``; ``metered`` routes are inference."""

    scopes: frozenset[str]
    metered: bool


@dataclass(slots=True)
class Admitted:
    """The outcome of admission for one request (``key`` is None with the trust layer off)."""

    key: KeyInfo | None
    metered: bool
    rate_headers: dict[str, str] = field(default_factory=dict)

    @property
    def pii(self) -> PiiPolicy | None:
        """The key's own PII policy (the model's is combined with it downstream)."""
        if self.key is None or not self.key.pii_policy:
            return None
        return _policy(self.key.pii_policy)

    def ensure_model(self, name: str, *, hide: bool = False) -> None:
        """403 when the allowlist excludes ``name`` (404 with ``hide``: do not reveal it)."""
        if self.key is None or self.key.allows_model(name):
            return
        if hide:
            raise NotFoundError(f"model {name!r} not found", param="model")
        raise ForbiddenError(f"this API key may not use model {name!r}", param="model")

    def allows_model(self, name: str) -> bool:
        return self.key is None or self.key.allows_model(name)


class Admission:
    def __init__(
        self,
        keys: KeyStore,
        limiter: Limiter,
        usage: UsageRecorder,
        *,
        enabled: bool = True,
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.usage = usage
        self.enabled = enabled

    # ---------------------------------------------------------------- admission

    async def authenticate(self, credential: str | None) -> KeyInfo:
        if not credential:
            raise UnauthorizedError(MISSING_KEY)
        key = self.keys.cached(credential)
        if key is None:
            key = await anyio.to_thread.run_sync(self.keys.authenticate, credential)
        return key

    async def authorize(
        self,
        key: KeyInfo,
        *,
        route: str,
        rule: RouteRule | None,
        path_models: Iterable[str] = (),
        hide_models: bool = False,
    ) -> Admitted:
        """Scopes, allowlist and (metered routes) limits and quotas for an authenticated key."""
        if rule is None:
            log.error("no authorization decision for %s; refusing", route)
            raise ForbiddenError(f"no authorization rule covers {route}")
        if not key.has_scope(*rule.scopes):
            raise ForbiddenError(
                f"this API key lacks the scope for {route}: needs "
                f"{' or '.join(sorted(rule.scopes))}, has {', '.join(key.scopes) or 'none'}"
            )
        admitted = Admitted(key=key, metered=rule.metered)
        for name in path_models:
            admitted.ensure_model(name, hide=hide_models)
        if not rule.metered:
            return admitted
        if key.rpm_limit is not None:
            state = await self.limiter.acquire_request(key.id, key.rpm_limit)
            admitted.rate_headers.update(rate_headers(state, None))
        if key.tpm_limit is not None:
            # Room for at least one token; generation checks its own figure (check_tokens).
            tokens = await self.limiter.check_tokens(key.id, key.tpm_limit, 1)
            admitted.rate_headers.update(rate_headers(None, tokens))
        await self.usage.quotas.check(
            key.id,
            request_quota=key.monthly_request_quota,
            token_quota=key.monthly_token_quota,
        )
        return admitted

    async def check_tokens(self, admitted: Admitted, needed: int) -> None:
        """429 unless the key's TPM window has room for ``needed`` tokens."""
        key = admitted.key
        if key is not None and key.tpm_limit is not None:
            state = await self.limiter.check_tokens(key.id, key.tpm_limit, needed)
            admitted.rate_headers.update(rate_headers(None, state))

    # --------------------------------------------------------------- settlement

    async def settle(self, admitted: Admitted, event: UsageEvent) -> None:
        """Meter one finished request: a queued usage record and its tokens against TPM."""
        key = admitted.key
        if key is None or not admitted.metered:
            return
        self.usage.record(event)
        if key.tpm_limit is not None and event.tokens:
            await self.limiter.record_tokens(key.id, key.tpm_limit, event.tokens)
