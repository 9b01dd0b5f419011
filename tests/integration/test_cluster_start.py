"""Nodes started at the same instant on a fresh PostgreSQL database, with the same config
file, all come up: applying the file is serialised, so no node fails on another's rows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..conftest import PG_URL
from ..users.servers import Server, shared_database
from .cluster import ACCOUNT, AUTH, CONFIG, Db

pytestmark = pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL")

AGENTS = 300
USERS = "".join(
    f"""
[[accounts.users]]
first_name = "Agent{i:03d}"
last_name = "Start"

[[accounts.users.devices]]
contact_uri = "+919900002{i:03d}"
available = true
verified = true
"""
    for i in range(AGENTS)
)


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[str]:
    with shared_database("postgresql", tmp_path) as url:
        yield url


async def test_four_nodes_started_together_all_apply_the_config_once(
    tmp_path: Path, fresh_db: str
) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG + USERS)
    url = fresh_db
    nodes = [Server(f"n{i}", url, tmp_path, config=config) for i in range(4)]
    try:
        for node in nodes:
            node.start()
        await asyncio.gather(*(node.wait_ready() for node in nodes))
        async with Db(url) as db:
            assert await db.value("SELECT count(*) FROM accounts") == 1
            assert await db.value("SELECT count(*) FROM users") == AGENTS
            assert await db.value("SELECT count(*) FROM devices") == AGENTS
        async with httpx.AsyncClient(timeout=10.0) as client:
            for node in nodes:
                r = await client.get(f"{node.base_url}/v2/accounts/{ACCOUNT}/users", headers=AUTH)
                assert r.json()["metadata"]["total"] == AGENTS
    finally:
        for node in nodes:
            node.kill()
