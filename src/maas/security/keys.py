"""API keys: ``maas-sk-<random>``; only a SHA-256 of the key is stored.

Keys carry 256 bits of randomness, so a fast hash is enough (no password
stretching needed): guessing is infeasible and lookups stay O(1) by hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from maas.errors import ConflictError, NotFoundError, UnauthorizedError
from maas.registry.db import Database
from maas.registry.models import ApiKeyRow, utcnow

KEY_PREFIX = "maas-sk-"
SCOPES = ("admin", "deploy", "read", "infer")


class KeyInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _info(row: ApiKeyRow) -> KeyInfo:
    def utc(value: datetime | None) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)

    return KeyInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),
        created_at=utc(row.created_at) or row.created_at,
        revoked_at=utc(row.revoked_at),
    )


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str, scopes: list[str]) -> tuple[KeyInfo, str]:
        """Create a key; returns its record and the plaintext, which is never stored."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise ConflictError(f"unknown scope(s): {', '.join(unknown)}", param="scopes")
        plaintext = generate_key()
        with self._db.write() as s:
            row = ApiKeyRow(
                name=name,
                prefix=plaintext[: len(KEY_PREFIX) + 4],
                key_hash=hash_key(plaintext),
                scopes=sorted(set(scopes)),
            )
            s.add(row)
            s.flush()
            return _info(row), plaintext

    def authenticate(self, plaintext: str) -> KeyInfo:
        if not plaintext.startswith(KEY_PREFIX):
            raise UnauthorizedError("invalid API key")
        digest = hash_key(plaintext)
        with self._db.read() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
            # The lookup is by hash; compare again in constant time so the
            # decision never depends on a short-circuiting string compare.
            if row is None or not hmac.compare_digest(row.key_hash, digest):
                raise UnauthorizedError("invalid API key")
            if row.revoked_at is not None:
                raise UnauthorizedError("this API key has been revoked")
            return _info(row)

    def list(self) -> list[KeyInfo]:
        with self._db.read() as s:
            return [_info(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def revoke(self, key_id: int) -> KeyInfo:
        with self._db.write() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"key {key_id} not found", param="key_id")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _info(row)

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
