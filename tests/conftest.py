"""Shared fixtures: real databases (a SQLite file, and PostgreSQL when configured), a manual
clock, the simulated carrier, and the app driven in-process over HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from callbridge.clock import ManualClock
from callbridge.store.repo import Store
from callbridge.store.schema import upgrade_to_head
from callbridge.store.tables import metadata

from .webhooks.helpers import Receiver

PG_URL = os.environ.get("CALLBRIDGE_TEST_DATABASE_URL")


def _backends() -> list[str]:
    return ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this test session, migrated once, dropped at the end."""
    if not PG_URL:
        yield None
        return
    import asyncpg

    admin_dsn = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"cb_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade_to_head(url)
    try:
        yield url
    finally:
        asyncio.run(drop())


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "callbridge.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str | None = request.getfixturevalue("pg_database")
    assert url is not None
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    if store.is_postgres:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        async with store.tx() as conn:
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    yield store
    await store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP/1.1 server on 127.0.0.1 that records the callbacks it receives."""
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def basic(key: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{token}".encode()).decode()}


REAL_TIME_SUITES = ("tests/sip/", "tests/integration/", "tests/dashboard/test_browser.py")
"""Tests that drive real processes (servers, SIPp, pjsua2 workers, Chromium) in real time on a
shared 2-core machine. A failure is retried once and reported as a rerun in the summary."""


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        path = item.nodeid.replace("\\", "/")
        if path.startswith(REAL_TIME_SUITES):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=1))
