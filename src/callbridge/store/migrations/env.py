"""Alembic environment: runs callbridge's migrations on an async engine (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from callbridge.store.tables import metadata

PG_MIGRATION_LOCK = 7_245_101


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def _sqlite_lock(url: str) -> Any:
    """Two processes migrating one SQLite file take turns on a lock file beside it."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    path = Path(database).with_suffix(".migrate.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def main() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url
    lock = _sqlite_lock(url) if make_url(url).get_backend_name() == "sqlite" else None
    try:
        asyncio.run(_run_async(url))
    finally:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


main()
