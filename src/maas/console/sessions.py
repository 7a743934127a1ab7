"""Console sessions: a random id in an HttpOnly cookie, the API key kept on the server.

A signed-in browser holds only a session id (256 random bits) in an HttpOnly,
SameSite=Strict cookie; page scripts never see the API key. The server keeps
one small file per session under ``MAAS_HOME/console/sessions`` so that every
HTTP worker of ``maas serve --workers N`` reads the same sessions (an in-memory
table would sign a browser out whenever its next request reached another worker).

Each file is named by the sha256 of the session id and sealed with AES-256-GCM
under a key derived from the session id itself: the directory alone (a backup,
a stolen disk) reveals no API key and no usable session id, and a file renamed
or edited fails authentication.

A session ends at the first of: sign-out, ``lifetime`` after sign-in, ``idle``
without a request (the file's mtime is the last use), or the key's own expiry.
A revoked key ends it at its next request: the API refuses the key (401) and the
console deletes the session (``api/console_proxy.py``).

CSRF: each session carries its own random token; every state-changing request
must echo it (``X-CSRF-Token`` header or a ``csrf`` form field), compared in
constant time. The sign-in form, which has no session yet, uses a double-submit
token in a short-lived cookie of its own (``LOGIN_COOKIE``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SESSION_COOKIE = "maas_console"
LOGIN_COOKIE = "maas_console_login"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
DEFAULT_LIFETIME_SECONDS = 12 * 3600
DEFAULT_IDLE_SECONDS = 3600
LOGIN_TOKEN_SECONDS = 600
_ID_BYTES = 32
_NONCE_BYTES = 12
_LABEL = b"maas console session v1"


def new_token() -> str:
    """A random URL-safe token (256 bits): session ids and CSRF tokens."""
    return secrets.token_urlsafe(_ID_BYTES)


def tokens_match(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an empty or missing token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser. ``key`` is the API key it acts with (never sent to it)."""

    id: str = field(repr=False)
    key: str = field(repr=False)
    csrf: str = field(repr=False)
    key_id: int
    key_name: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float


class SessionStore:
    """Sessions as sealed files in ``directory`` (created 0700 on first use)."""

    def __init__(
        self,
        directory: Path,
        *,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
        idle: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        self.directory = directory
        self.lifetime = lifetime
        self.idle = idle

    def create(
        self,
        key: str,
        *,
        key_id: int,
        key_name: str,
        scopes: tuple[str, ...],
        key_expires_at: datetime | None,
    ) -> Session:
        """A new session for an authenticated key; expired sessions are swept first."""
        self.sweep()
        now = time.time()
        expires = now + self.lifetime
        if key_expires_at is not None:
            expires = min(expires, key_expires_at.timestamp())
        session = Session(
            id=new_token(),
            key=key,
            csrf=new_token(),
            key_id=key_id,
            key_name=key_name,
            scopes=scopes,
            created_at=now,
            expires_at=expires,
        )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(session.id)
        payload = json.dumps(
            {
                "key": session.key,
                "csrf": session.csrf,
                "key_id": key_id,
                "key_name": key_name,
                "scopes": list(scopes),
                "created_at": session.created_at,
                "expires_at": session.expires_at,
            }
        ).encode()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + AESGCM(_file_key(session.id)).encrypt(nonce, payload, path.name.encode())
        # Written under a temporary name and renamed: a reader never sees half a file.
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(sealed)
        tmp.replace(path)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown, tampered, expired or idle)."""
        if not session_id or len(session_id) > 128:
            return None
        path = self._path(session_id)
        try:
            sealed = path.read_bytes()
            last_used = path.stat().st_mtime
        except OSError:
            return None
        now = time.time()
        try:
            nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
            plain = AESGCM(_file_key(session_id)).decrypt(nonce, ciphertext, path.name.encode())
            data = json.loads(plain)
        except (InvalidTag, ValueError):
            path.unlink(missing_ok=True)
            return None
        if now >= float(data["expires_at"]) or now - last_used > self.idle:
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # the last use: the idle timeout counts from here
        return Session(
            id=session_id,
            key=str(data["key"]),
            csrf=str(data["csrf"]),
            key_id=int(data["key_id"]),
            key_name=str(data["key_name"]),
            scopes=tuple(data["scopes"]),
            created_at=float(data["created_at"]),
            expires_at=float(data["expires_at"]),
        )

    def delete(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= 128:
            self._path(session_id).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove the files of sessions idle past ``idle`` or older than ``lifetime``."""
        removed = 0
        now = time.time()
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return 0
        for path in entries:
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > min(self.idle, self.lifetime):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _path(self, session_id: str) -> Path:
        return self.directory / hashlib.sha256(session_id.encode()).hexdigest()


def _file_key(session_id: str) -> bytes:
    """The AES-256 key of one session's file, derived from its id (never stored)."""
    return hmac.new(session_id.encode(), _LABEL, hashlib.sha256).digest()
