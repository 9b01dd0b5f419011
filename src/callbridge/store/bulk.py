"""Fast multi-row writes for the group-commit writer.

SQLAlchemy processes every parameter set of an executemany in Python (compile, construct the
parameters, run each column's bind processor), which costs far more than the database itself
for the small rows calls write. On SQLite, the hot statements go to the driver directly with
values adapted the way SQLAlchemy would store them (so SQLAlchemy reads them back unchanged);
other databases use SQLAlchemy's executemany.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Table, bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

Adapter = Callable[[Any], Any]


def sqlite_datetime(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME storage format, in UTC."""
    if value is None:
        return None
    return _sqlite_datetime(value)


@lru_cache(maxsize=8192)
def _sqlite_datetime(value: datetime) -> str:
    # Cached: a call's rows repeat most of their timestamps (start, answer) on every update.
    tz = value.tzinfo
    if tz is None:
        return value.isoformat(" ", "microseconds")
    if tz is not UTC:
        value = value.astimezone(UTC)
    # "YYYY-MM-DD HH:MM:SS.ffffff+00:00" without its offset: one C call and a slice.
    return value.isoformat(" ", "microseconds")[:-6]


def _sqlite_json(value: Any) -> str:
    # SQLAlchemy's JSON type stores Python None as the JSON text 'null' (none_as_null=False).
    return json.dumps(value)


def _sqlite_bool(value: bool | None) -> int | None:
    return None if value is None else int(value)


@lru_cache(maxsize=64)
def _sqlite_adapters(table: Table, columns: tuple[str, ...]) -> tuple[tuple[int, Adapter], ...]:
    """(position, adapter) for each column whose value SQLite cannot take as it is."""
    adapters: list[tuple[int, Adapter]] = []
    for position, name in enumerate(columns):
        kind = table.c[name].type
        if isinstance(kind, DateTime):
            adapters.append((position, sqlite_datetime))
        elif isinstance(kind, JSON):
            adapters.append((position, _sqlite_json))
        elif isinstance(kind, Boolean):
            adapters.append((position, _sqlite_bool))
    return tuple(adapters)


def _adapt(
    table: Table, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> list[tuple[Any, ...]]:
    adapters = _sqlite_adapters(table, columns)
    adapted: list[tuple[Any, ...]] = []
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"{table.name}: {len(row)} values for {len(columns)} columns")
        values = list(row)
        for position, adapter in adapters:
            values[position] = adapter(values[position])
        adapted.append(tuple(values))
    return adapted


async def _sqlite_driver(conn: AsyncConnection) -> Any:
    """The aiosqlite connection under `conn`. A statement sent to it directly crosses to the
    database thread once, where SQLAlchemy's async adapter crosses several times (cursor,
    execute, fetch, close); it runs inside `conn`'s transaction like any other."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def sqlite_execute_many(
    conn: AsyncConnection, sql: str, rows: Sequence[Sequence[Any]]
) -> None:
    """Run one SQLite statement for every parameter row, on `conn`'s transaction."""
    driver = await _sqlite_driver(conn)
    cursor = await driver.executemany(sql, rows)
    await cursor.close()


async def sqlite_fetch_all(
    conn: AsyncConnection, sql: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """Run one SQLite query on `conn`'s transaction; returns its rows as tuples."""
    driver = await _sqlite_driver(conn)
    rows = await driver.execute_fetchall(sql, tuple(params))
    return [tuple(r) for r in rows]


def placeholders(count: int) -> str:
    """`?, ?, …` for an SQLite `IN (…)` list of `count` values."""
    return ", ".join("?" * count)


async def insert_rows(
    conn: AsyncConnection,
    table: Table,
    columns: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
    *,
    skip_conflicts: bool = False,
) -> None:
    """INSERT many rows given as tuples in `columns` order; with `skip_conflicts`, a row that
    would violate a unique key is skipped (`ON CONFLICT DO NOTHING`) instead of failing."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        if skip_conflicts:
            sql += " ON CONFLICT DO NOTHING"
        await sqlite_execute_many(conn, sql, _adapt(table, columns, rows))
        return
    statement = pg_insert(table).on_conflict_do_nothing() if skip_conflicts else insert(table)
    await conn.execute(statement, [dict(zip(columns, row, strict=True)) for row in rows])


async def update_rows(
    conn: AsyncConnection,
    table: Table,
    key: str,
    columns: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
) -> None:
    """UPDATE many rows; each row is (*values in `columns` order, key value), applied in order."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        sql = f"UPDATE {table.name} SET {', '.join(f'{c} = ?' for c in columns)} WHERE {key} = ?"
        await sqlite_execute_many(conn, sql, _adapt(table, (*columns, key), rows))
        return
    statement = (
        update(table)
        .where(table.c[key] == bindparam("b_key"))
        .values({c: bindparam(c) for c in columns})
    )
    await conn.execute(
        statement,
        [{**dict(zip(columns, row[:-1], strict=True)), "b_key": row[-1]} for row in rows],
    )
