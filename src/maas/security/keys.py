"""API keys: ``maas-sk-<random>``; only a SHA-256 of the key is stored.

Keys carry 256 bits of randomness, so a fast hash is enough (no password
stretching needed): guessing is infeasible and lookups stay O(1) by hash. The
row is found by hash and the hash compared again in constant time.

A key holds its own policy: scopes, a model allowlist, an expiry, RPM/TPM
limits, monthly quotas and a PII policy.

Authenticated keys are cached in process memory, so the request path does not
query the database. The cache stays correct this way:

* a change made through this store (revoke, rotate, update) empties the cache
  at once: the next request in this process sees it;
* every change also bumps the ``keys`` change epoch in the same transaction;
  every server process's ``registry.epochs.EpochWatcher`` polls the epochs
  and calls :meth:`KeyStore.clear_cache` when it moved, so other processes sharing the
  database drop their cache within that time (tested: under 1 s);
* expiry is checked against the cached record on every request, and an entry
  is re-read after ``CACHE_TTL_SECONDS`` anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from maas.errors import InvalidRequestError, NotFoundError, UnauthorizedError
from maas.registry.db import Database
from maas.registry.epochs import KEYS, bump
from maas.registry.models import ApiKeyRow, utcnow
from maas.security.pii import PiiPolicy
from maas.security.scopes import SCOPES, has_any_scope, model_allowed

KEY_PREFIX = "maas-sk-"
CACHE_TTL_SECONDS = 60.0


# The policy fields' types and bounds, defined once: KeyPolicy (create) and the API's
# update body (api/keys.py) both use them, and a test keeps the two field sets equal.
Owner = Annotated[str, Field(max_length=128)]
ModelPatterns = Annotated[
    list[str], Field(description="Model names or globs; empty = every model.")
]
PerMinuteLimit = Annotated[int, Field(ge=1)]
MonthlyQuota = Annotated[int, Field(ge=0)]


class KeyPolicy(BaseModel):
    """What a key may do; every field optional (``None`` = no limit)."""

    model_config = ConfigDict(extra="forbid")

    scopes: list[str] = Field(default_factory=lambda: ["infer"])
    owner: Owner | None = None
    models: ModelPatterns = Field(default_factory=list)
    expires_at: datetime | None = None
    rpm_limit: PerMinuteLimit | None = None
    tpm_limit: PerMinuteLimit | None = None
    monthly_token_quota: MonthlyQuota | None = None
    monthly_request_quota: MonthlyQuota | None = None
    pii_policy: str | None = None


class KeyInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    prefix: str
    scopes: list[str]
    owner: str | None = None
    models: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    monthly_token_quota: int | None = None
    monthly_request_quota: int | None = None
    pii_policy: str | None = None
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    rotated_from: int | None = None

    def has_scope(self, *required: str) -> bool:
        return has_any_scope(self.scopes, required)

    def allows_model(self, model: str) -> bool:
        return model_allowed(self.models, model)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite hands back naive datetimes


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),
        owner=row.owner,
        models=list(row.models or []),
        expires_at=_utc(row.expires_at),
        rpm_limit=row.rpm_limit,
        tpm_limit=row.tpm_limit,
        monthly_token_quota=row.monthly_token_quota,
        monthly_request_quota=row.monthly_request_quota,
        pii_policy=row.pii_policy,
        created_at=_utc(row.created_at) or row.created_at,
        last_used_at=_utc(row.last_used_at),
        revoked_at=_utc(row.revoked_at),
        rotated_from=row.rotated_from,
    )


def validate_policy(policy: KeyPolicy) -> KeyPolicy:
    unknown = sorted(set(policy.scopes) - set(SCOPES))
    if unknown:
        raise InvalidRequestError(
            f"unknown scope(s): {', '.join(unknown)}; expected any of {', '.join(SCOPES)}",
            param="scopes",
        )
    if not policy.scopes:
        raise InvalidRequestError("a key needs at least one scope", param="scopes")
    if policy.pii_policy is not None:
        PiiPolicy.parse(policy.pii_policy)  # 400 naming pii_policy when unknown
    if policy.expires_at is not None:
        expires = _utc(policy.expires_at)
        assert expires is not None
        if expires <= datetime.now(UTC):
            raise InvalidRequestError("expires_at is in the past", param="expires_at")
    for pattern in policy.models:
        if not pattern or len(pattern) > 128:
            raise InvalidRequestError("model allowlist entries must be 1-128 chars", param="models")
    return policy


def _checked(info: KeyInfo) -> KeyInfo:
    if info.revoked_at is not None:
        raise UnauthorizedError("this API key has been revoked")
    if info.expires_at is not None and info.expires_at <= datetime.now(UTC):
        raise UnauthorizedError("this API key has expired")
    return info


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # key hash -> (monotonic time read, record); see the module docstring.
        self._cache: dict[str, tuple[float, KeyInfo]] = {}
        # Bumped by every clear: a read that started before a clear must not
        # put its (possibly stale) record back into the cache afterwards.
        self._generation = 0

    def create(
        self, name: str, scopes: list[str] | None = None, policy: KeyPolicy | None = None
    ) -> tuple[KeyInfo, str]:
        """Create a key; returns its record and the plaintext, which is never stored."""
        if policy is None:
            policy = KeyPolicy(scopes=scopes or ["infer"])
        elif scopes is not None:
            policy = policy.model_copy(update={"scopes": scopes})
        validate_policy(policy)
        if not name or len(name) > 128:
            raise InvalidRequestError("key name must be 1-128 characters", param="name")
        plaintext = generate_key()
        with self._db.write() as s:
            row = ApiKeyRow(
                name=name,
                prefix=plaintext[: len(KEY_PREFIX) + 4],
                key_hash=hash_key(plaintext),
                **self._policy_columns(policy),
            )
            s.add(row)
            s.flush()
            return _info(row), plaintext

    @staticmethod
    def _policy_columns(policy: KeyPolicy) -> dict[str, Any]:
        return {
            "scopes": sorted(set(policy.scopes)),
            "owner": policy.owner,
            "models": list(dict.fromkeys(policy.models)),
            "expires_at": _utc(policy.expires_at),
            "rpm_limit": policy.rpm_limit,
            "tpm_limit": policy.tpm_limit,
            "monthly_token_quota": policy.monthly_token_quota,
            "monthly_request_quota": policy.monthly_request_quota,
            "pii_policy": policy.pii_policy,
        }

    def cached(self, plaintext: str) -> KeyInfo | None:
        """The key from the in-process cache, without I/O; None when not cached.

        Raises for a cached key that is revoked or has expired since.
        """
        hit = self._cache.get(hash_key(plaintext))
        if hit is None or time.monotonic() - hit[0] > CACHE_TTL_SECONDS:
            return None
        return _checked(hit[1])

    def authenticate(self, plaintext: str) -> KeyInfo:
        """Check a key against the database (and cache what was found)."""
        if not plaintext.startswith(KEY_PREFIX):
            raise UnauthorizedError("invalid API key")
        digest = hash_key(plaintext)
        generation = self._generation
        with self._db.read() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
            # The lookup is by hash; compare again in constant time so the
            # decision never depends on a short-circuiting string compare.
            if row is None or not hmac.compare_digest(row.key_hash, digest):
                raise UnauthorizedError("invalid API key")
            info = _info(row)
        if len(self._cache) > 10_000:
            self.clear_cache()
        if generation == self._generation:
            self._cache[digest] = (time.monotonic(), info)
        return _checked(info)

    def clear_cache(self) -> None:
        self._generation += 1
        self._cache.clear()

    def _changed(self, session: Any) -> None:
        """A key changed in ``session``: tell other processes; this one clears now
        and again after the commit (``_committed``), so no read in between sticks."""
        bump(session, KEYS)
        self.clear_cache()

    def _committed(self, info: KeyInfo) -> KeyInfo:
        self.clear_cache()
        return info

    def get(self, key_id: int) -> KeyInfo:
        with self._db.read() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"key {key_id} not found", param="key_id")
            return _info(row)

    def list(self) -> list[KeyInfo]:
        with self._db.read() as s:
            return [_info(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def update(self, key_id: int, changes: dict[str, Any]) -> KeyInfo:
        """Change a key's policy (not its secret); ``changes`` holds KeyPolicy fields."""
        with self._db.write() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"key {key_id} not found", param="key_id")
            current = _info(row)
            merged = KeyPolicy(
                **{
                    **{f: getattr(current, f) for f in KeyPolicy.model_fields},
                    **changes,
                }
            )
            validate_policy(merged)
            for column, value in self._policy_columns(merged).items():
                setattr(row, column, value)
            self._changed(s)
            s.flush()
            info = _info(row)
        return self._committed(info)

    def revoke(self, key_id: int) -> KeyInfo:
        with self._db.write() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"key {key_id} not found", param="key_id")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                self._changed(s)
            info = _info(row)
        return self._committed(info)

    def rotate(self, key_id: int) -> tuple[KeyInfo, str]:
        """Replace a key by a new secret with the same policy; the old one is revoked."""
        plaintext = generate_key()
        with self._db.write() as s:
            old = s.get(ApiKeyRow, key_id)
            if old is None:
                raise NotFoundError(f"key {key_id} not found", param="key_id")
            if old.revoked_at is not None:
                raise InvalidRequestError(f"key {key_id} is revoked; create a new one instead")
            policy = KeyPolicy(
                **{f: getattr(_info(old), f) for f in KeyPolicy.model_fields},
            )
            row = ApiKeyRow(
                name=old.name,
                prefix=plaintext[: len(KEY_PREFIX) + 4],
                key_hash=hash_key(plaintext),
                rotated_from=old.id,
                **self._policy_columns(policy),
            )
            old.revoked_at = utcnow()
            self._changed(s)
            s.add(row)
            s.flush()
            info = _info(row)
        return self._committed(info), plaintext

    def touch(self, last_used: dict[int, datetime]) -> None:
        """Record when keys were last used (batched by the usage recorder)."""
        if not last_used:
            return
        with self._db.write() as s:
            for key_id, when in last_used.items():
                row = s.get(ApiKeyRow, key_id)
                if row is not None:
                    row.last_used_at = when

    def has_active_admin(self) -> bool:
        return any("admin" in k.scopes and k.revoked_at is None for k in self.list())

    def bootstrap_admin(self, key_file: Path) -> Path | None:
        """Create the first admin key on a fresh install and write it to ``key_file``.

        The file is created with mode 0600 and O_EXCL, so an existing file is
        never overwritten. Returns the path when a key was created.
        """
        if self.has_active_admin():
            return None
        _, plaintext = self.create("bootstrap-admin", ["admin", "infer"])
        key_file.parent.mkdir(parents=True, exist_ok=True)
        if key_file.exists():
            key_file.unlink()  # a stale file from a wiped database; its key is gone
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(plaintext + "\n")
        return key_file
