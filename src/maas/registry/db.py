"""Database engine, sessions and schema migrations.

SQLite is the default and gets three deliberate settings: WAL (readers never
wait for the writer), ``busy_timeout`` (writers queue instead of failing), and
``BEGIN IMMEDIATE`` for write transactions. The last one matters: a deferred
transaction that reads and then writes can hit SQLITE_BUSY_SNAPSHOT, which no
timeout fixes; taking the write lock up front makes concurrent pushes queue.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_BEGIN_OPTION = "maas_sqlite_begin"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str) -> Engine:
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, future=True)

    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy (not the sqlite3 module) decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Database:
    """Engine plus two session factories: plain reads and serialised writes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        write_engine = (
            self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
            if is_sqlite(url)
            else self.engine
        )
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine, expire_on_commit=False)
        # Change-epoch name -> callbacks run after a commit that bumped it (registry.epochs).
        self._on_commit: dict[str, list[Callable[[], None]]] = {}

    @property
    def write_sessions(self) -> sessionmaker[Session]:
        return self._write

    def on_commit(self, name: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every commit in this process that bumps epoch ``name``."""
        self._on_commit.setdefault(name, []).append(callback)

    def committed(self, name: str) -> None:
        for callback in self._on_commit.get(name, ()):
            callback()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class _QuietMigrationContext(logging.Filter):
    """Drop alembic's two lines about the dialect, printed by every process at every start
    (``make run`` showed them once per process); keep what says a migration ran."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Context impl ", "Will assume "))


logging.getLogger("alembic.runtime.migration").addFilter(_QuietMigrationContext())


def migrate(db: Database, lock_dir: Path | None = None) -> None:
    """Bring the schema to the newest revision; safe to call from many processes.

    SQLite: a file lock beside the database serialises concurrent first starts.
    PostgreSQL: a transaction-level advisory lock does the same.
    """
    cfg = alembic_config(db.url)
    if is_sqlite(db.url):
        lock_path = (lock_dir or Path(".")) / ".migrate.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with db.engine.connect() as conn:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(424242)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
