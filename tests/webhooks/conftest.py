"""Fixtures for webhook tests: a real HTTP receiver on 127.0.0.1 and real databases (a SQLite file,
and PostgreSQL in a throw-away schema when CALLBRIDGE_TEST_DATABASE_URL is set)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from callbridge.store.tables import metadata

from .helpers import sqlite_engine

PG_URL_ENV = "CALLBRIDGE_TEST_DATABASE_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        eng = sqlite_engine(tmp_path / "callbridge.db")
        async with eng.begin() as conn:
            await conn.run_sync(metadata.create_all)
        try:
            yield eng
        finally:
            await eng.dispose()
        return
    url = os.environ.get(PG_URL_ENV)
    if not url:
        pytest.skip(f"set {PG_URL_ENV} to run against PostgreSQL")
    schema = f"cbtest_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    try:
        async with eng.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield eng
    finally:
        await eng.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()
