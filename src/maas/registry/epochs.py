"""Change epochs: how every process sharing a database learns that a cache went stale.

Processes keep what the request path reads in memory — API keys
(``security.keys``), resolved model references (``serving.dataplane``) — so a
request does no database query. Each such cache has a counter row in
``change_epochs``, bumped in the same transaction as any change it depends on:

* ``keys``: bumped by ``KeyStore`` itself on revoke, rotate and update;
* ``registry``: bumped automatically by any write session that adds, changes or
  deletes a model, version, file, alias, deployment or routing policy row
  (``track_registry_changes``), so no registry operation, present or future, can
  forget it.

``EpochWatcher`` reads every counter in one query every ``POLL_SECONDS`` and
calls the callbacks of those that moved: other processes see a change within
that time (tested: revocation and an alias move, under 1 s). In the process
that made a change, ``Database.on_commit`` callbacks run right after the
commit, so its own next request sees it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from maas.registry.db import Database
from maas.registry.models import (
    AliasRow,
    ChangeEpochRow,
    DeploymentRow,
    ModelRow,
    RoutingPolicyRow,
    VersionFileRow,
    VersionRow,
)

log = logging.getLogger(__name__)

KEYS = "keys"
REGISTRY = "registry"
POLL_SECONDS = 0.25

_REGISTRY_ROWS = (
    ModelRow,
    VersionRow,
    VersionFileRow,
    AliasRow,
    DeploymentRow,
    RoutingPolicyRow,
)
_CHANGED = "maas.changed_epochs"  # session.info: names bumped in this transaction


def bump(session: Session, name: str) -> None:
    """Move ``name``'s counter on, in ``session``'s transaction (once per transaction)."""
    changed: set[str] = session.info.setdefault(_CHANGED, set())
    if name in changed:
        return
    changed.add(name)
    row = session.get(ChangeEpochRow, name)
    if row is None:
        session.add(ChangeEpochRow(name=name, value=1))
    else:
        row.value = row.value + 1


def read_all(db: Database) -> dict[str, int]:
    """Every counter, in one Core query (it runs four times a second in every process)."""
    with db.engine.connect() as conn:
        rows = conn.execute(select(ChangeEpochRow.name, ChangeEpochRow.value)).all()
    return {name: int(value) for name, value in rows}


def track_registry_changes(db: Database) -> None:
    """Bump ``registry`` in every write session of ``db`` that touches registry rows,
    and run ``db``'s ``on_commit`` callbacks for the names a transaction bumped."""

    def before_flush(session: Session, _context: Any, _instances: Any) -> None:
        touched = (*session.new, *session.dirty, *session.deleted)
        if any(isinstance(row, _REGISTRY_ROWS) for row in touched):
            bump(session, REGISTRY)

    def after_commit(session: Session) -> None:
        for name in session.info.pop(_CHANGED, ()):
            db.committed(name)

    def after_rollback(session: Session) -> None:
        session.info.pop(_CHANGED, None)

    factory = db.write_sessions
    event.listen(factory, "before_flush", before_flush)
    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_soft_rollback", lambda s, _t: after_rollback(s))


class EpochWatcher:
    """Polls the counters and calls each moved one's callbacks (on the event loop)."""

    def __init__(self, db: Database, poll_seconds: float = POLL_SECONDS) -> None:
        self._db = db
        self._poll_seconds = poll_seconds
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._seen: dict[str, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def on(self, name: str, callback: Callable[[], None]) -> None:
        self._callbacks.setdefault(name, []).append(callback)

    def poll(self, current: dict[str, int]) -> list[str]:
        """Call the callbacks of the counters that moved since the last poll; their names."""
        seen, self._seen = self._seen, current
        if seen is None:
            return []  # the first reading is the baseline
        moved = [name for name in self._callbacks if current.get(name) != seen.get(name)]
        for name in moved:
            for callback in self._callbacks[name]:
                callback()
        return moved

    async def start(self) -> None:
        self.poll(await anyio.to_thread.run_sync(read_all, self._db))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="epoch watcher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                self.poll(await anyio.to_thread.run_sync(read_all, self._db))
            except Exception:
                # A database hiccup: keep serving from the caches, try again soon.
                log.warning("reading the change epochs failed", exc_info=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
