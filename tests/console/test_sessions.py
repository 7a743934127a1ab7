"""Console sessions: sealed files, expiry with the key, idle timeout, CSRF comparison."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from maas.console.sessions import SessionStore, new_token, tokens_match

KEY = "maas-sk-" + "k" * 43


def _create(store: SessionStore, expires: datetime | None = None) -> str:
    session = store.create(KEY, key_id=7, key_name="ops", scopes=("admin",), key_expires_at=expires)
    return session.id


def test_a_session_reads_back_with_its_key_and_csrf_token(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = store.create(KEY, key_id=7, key_name="ops", scopes=("read",), key_expires_at=None)
    again = store.get(session.id)
    assert again is not None
    assert (again.key, again.csrf, again.key_id, again.scopes) == (KEY, session.csrf, 7, ("read",))


def test_the_session_file_holds_neither_the_key_nor_the_session_id(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session_id = _create(store)
    [path] = tmp_path.iterdir()
    sealed = path.read_bytes()
    assert KEY.encode() not in sealed
    assert session_id.encode() not in sealed and session_id not in path.name
    assert path.stat().st_mode & 0o077 == 0


def test_an_unknown_or_malformed_session_id_is_no_session(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    _create(store)
    assert store.get(new_token()) is None
    assert store.get("") is None
    assert store.get(None) is None
    assert store.get("x" * 10_000) is None


def test_a_tampered_session_file_is_refused_and_removed(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session_id = _create(store)
    [path] = tmp_path.iterdir()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert store.get(session_id) is None
    assert not path.exists()


def test_a_session_ends_when_its_key_expires(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session_id = _create(store, expires=datetime.now(UTC) - timedelta(seconds=1))
    assert store.get(session_id) is None


def test_a_session_never_outlives_its_key(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, lifetime=3600)
    soon = datetime.now(UTC) + timedelta(minutes=5)
    session = store.create(KEY, key_id=1, key_name="k", scopes=(), key_expires_at=soon)
    assert session.expires_at == soon.timestamp()


def test_an_idle_session_ends_and_is_swept(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, idle=60)
    session_id = _create(store)
    [path] = tmp_path.iterdir()
    past = time.time() - 120
    os.utime(path, (past, past))
    assert store.get(session_id) is None
    stale = _create(store)
    [path] = tmp_path.iterdir()
    os.utime(path, (past, past))
    _create(store)  # creating a session sweeps the stale one
    assert store.get(stale) is None
    assert len(list(tmp_path.iterdir())) == 1


def test_sign_out_deletes_the_session(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session_id = _create(store)
    store.delete(session_id)
    assert store.get(session_id) is None


def test_csrf_tokens_match_only_when_equal_and_present() -> None:
    token = new_token()
    assert tokens_match(token, token)
    assert not tokens_match(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not tokens_match(token, None)
    assert not tokens_match(token, "")
    assert not tokens_match("", "")
