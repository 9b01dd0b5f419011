"""The Store: database engines and transactions for SQLite (WAL) and PostgreSQL.

Writes go through `tx()`. On SQLite a write transaction starts with `BEGIN IMMEDIATE` on a
single pooled connection, so writers queue in-process and across processes (busy timeout)
instead of failing; reads use `read()`, a separate pool that WAL lets run beside writers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from callbridge.store.tables import metadata

SQLITE_BUSY_TIMEOUT_MS = 15000


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything in callbridge is aware UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utc_required(value: datetime) -> datetime:
    result = utc(value)
    assert result is not None
    return result


def describe_db_error(exc: BaseException) -> str:
    """One line about a database failure: the driver's own message, never the URL."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text[:200]}"


def is_unique_violation(exc: IntegrityError) -> bool:
    text = str(exc.orig).lower()
    return "unique" in text or "duplicate" in text or "primary key" in text


def _sqlite_engine(url: str, *, writer: bool) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        pool_size=1 if writer else 4,
        max_overflow=0,
        pool_timeout=60,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Store:
    """Owns the engines; every repository function takes a connection from here."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        if self.is_sqlite:
            self.write_engine = _sqlite_engine(url, writer=True)
            self.read_engine = _sqlite_engine(url, writer=False)
        else:
            self.write_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False
            )
            self.read_engine = self.write_engine
        self._lease_engine: AsyncEngine | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed on normal exit, rolled back on error."""
        async with self.write_engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def lease_tx(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction for lease heartbeats. On PostgreSQL it has a connection of its
        own, so a busy pool never delays a heartbeat; SQLite has one writer connection."""
        if self.is_sqlite:
            async with self.tx() as conn:
                yield conn
            return
        if self._lease_engine is None:
            self._lease_engine = create_async_engine(self.url, pool_size=1, max_overflow=0)
        async with self._lease_engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.read_engine.connect() as conn:
            yield conn

    async def create_all(self) -> None:
        """Create every table directly (tests and first runs; `migrate` uses Alembic)."""
        async with self.tx() as conn:
            await conn.run_sync(metadata.create_all)

    async def ping(self) -> bool:
        from sqlalchemy import text

        try:
            async with self.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        if self._lease_engine is not None:
            await self._lease_engine.dispose()
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


def null_pool_engine(url: str) -> AsyncEngine:
    """A short-lived engine for one-off CLI work (migrations)."""
    return create_async_engine(url, poolclass=NullPool)
