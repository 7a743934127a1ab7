"""The Alembic migrations build the same schema the ORM describes, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from maas.config import Settings
from maas.registry.db import Database, migrate
from maas.registry.models import Base
from maas.registry.store import Registry
from tests.helpers import make_hf_dir
from tests.pg import fresh_postgres_url


def _schema_diff(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_migrations_create_the_full_schema_from_an_empty_sqlite_file(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert inspect(db.engine).get_table_names() == []
        migrate(db, lock_dir=tmp_path)
        tables = set(inspect(db.engine).get_table_names())
        assert {
            "models",
            "versions",
            "version_files",
            "aliases",
            "alias_events",
            "api_keys",
            "alembic_version",
        } <= tables
        assert _schema_diff(db) == []
        migrate(db, lock_dir=tmp_path)  # idempotent
    finally:
        db.dispose()


def test_sqlite_runs_in_wal_mode(registry: Registry) -> None:
    with registry.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_url()


def test_migrations_and_registry_work_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "pg-home", database_url=postgres_url)
    reg = Registry(settings)
    try:
        assert _schema_diff(reg.db) == []
        model_dir = make_hf_dir(tmp_path / "m")
        with ThreadPoolExecutor(4) as pool:
            numbers = list(
                pool.map(
                    lambda _: reg.push(model_dir, "m", task="text-classification").version, range(4)
                )
            )
        assert sorted(numbers) == [1, 2, 3, 4]
        reg.set_alias("m", "production", 2)
        reg.set_alias("m", "production", 4)
        assert reg.rollback("m", "production").version == 2
        assert reg.resolve("m").version == 2
        assert reg.check_consistency() == []
    finally:
        reg.close()
