"""A server whose database is not there yet: it serves /healthz, answers 503 on /readyz and
on the API, keeps trying, and becomes ready once the database exists (PostgreSQL)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from ..conftest import PG_URL
from ..harness import DEFAULT_CONFIG
from ..users.servers import Server, basic

pytestmark = pytest.mark.skipif(PG_URL is None, reason="needs CALLBRIDGE_TEST_DATABASE_URL")

AUTH = basic("k_live_1", "t_live_1")


async def _admin(sql: str) -> None:
    import asyncpg

    assert PG_URL is not None
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_server_waits_for_its_database_and_then_becomes_ready(tmp_path: Path) -> None:
    assert PG_URL is not None
    name = f"cb_late_{uuid.uuid4().hex[:12]}"
    config = tmp_path / "callbridge.toml"
    config.write_text(DEFAULT_CONFIG)
    server = Server("late", PG_URL.rsplit("/", 1)[0] + f"/{name}", tmp_path, config=config)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, server.log_tail()
                await asyncio.sleep(0.1)
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "not ready", "database": False, "driver": False}
            api = await client.get("/v3/accounts/acme/calls/" + "0" * 32, headers=AUTH)
            assert api.status_code == 503
            assert api.json()["response"]["error_data"]["code"] == 503

            await _admin(f'CREATE DATABASE "{name}"')
            await server.wait_ready(timeout_s=30)  # schema, config and engine come up
            r = await client.get("/v3/accounts/acme/calls/" + "0" * 32, headers=AUTH)
            assert r.status_code == 404 and r.json()["response"]["error_data"]["code"] == 1021
        assert "database unreachable at start" in server.log_tail(20_000)
    finally:
        server.kill(signal.SIGTERM)
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
