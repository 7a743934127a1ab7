"""A throwaway PostgreSQL database per test, or a visible skip when there is no server.

``postgres_database`` is the database itself, for whatever needs one (tests here,
``benchmarks/scale.py``); ``fresh_postgres_url`` is the tests' form of it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    """The PostgreSQL server to make databases on: ``MAAS_TEST_DATABASE_URL`` or the default."""
    return os.environ.get("MAAS_TEST_DATABASE_URL", DEFAULT_URL)


@contextmanager
def postgres_database(base: str | None = None, *, prefix: str = "maas_test") -> Iterator[str]:
    """The URL of a new, empty database on ``base``'s server, dropped at the end (even
    while connections to it remain). Raises when the server does not answer."""
    base = base or server_url()
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(base).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def fresh_postgres_url() -> Iterator[str]:
    base = server_url()
    try:
        probe = create_engine(base)
        with probe.connect() as conn:
            conn.execute(text("SELECT 1"))
        probe.dispose()
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {base} (set MAAS_TEST_DATABASE_URL): {exc}")
    with postgres_database(base) as url:
        yield url
