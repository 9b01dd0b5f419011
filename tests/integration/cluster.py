"""A cluster of real `callbridge serve` processes on one PostgreSQL database, for the proofs
that drive nodes until their guarantees would break: kill -9, restarts, stalls (SIGSTOP).

Nodes log JSON lines to their own files; the helpers read those lines (lease and reconcile
events) and the shared database directly, so the assertions see what really happened."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from ..users.servers import Server, basic, path_uri

ACCOUNT = "acme"
KEY, TOKEN = "k_cluster", "t_cluster"
AUTH = basic(KEY, TOKEN)
EXOPHONE = "+912241499102"

CONFIG = f"""
[[accounts]]
sid = "{ACCOUNT}"
api_key = "{KEY}"
api_token = "{TOKEN}"
rate_limit_per_minute = 0
exophones = ["{EXOPHONE}"]
"""


def lease_env(ttl_s: float, heartbeat_s: float, reconcile_s: float) -> dict[str, str]:
    return {
        "CALLBRIDGE_LEASE_TTL_S": str(ttl_s),
        "CALLBRIDGE_HEARTBEAT_INTERVAL_S": str(heartbeat_s),
        "CALLBRIDGE_RECONCILE_INTERVAL_S": str(reconcile_s),
        # A killed node's claimed deliveries are taken over after this, not the default 60 s.
        "CALLBRIDGE_CALLBACK_LEASE_S": "4",
        "CALLBRIDGE_CALLBACK_POLL_INTERVAL_S": "0.2",
        # INFO: the lease and reconcile events the assertions read.
        "CALLBRIDGE_LOG_LEVEL": "INFO",
    }


def make_nodes(names: Iterable[str], url: str, workdir: Path, env: dict[str, str]) -> list[Server]:
    config = workdir / "cluster.toml"
    config.write_text(CONFIG)
    return [Server(name, url, workdir, config=config, env=env) for name in names]


class Db:
    """Direct reads of the shared PostgreSQL database (a small pool: callers may read at once)."""

    def __init__(self, url: str) -> None:
        self.dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> Db:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        assert self._pool is not None
        result: list[asyncpg.Record] = await self._pool.fetch(sql, *args)
        return result

    async def value(self, sql: str, *args: Any) -> Any:
        assert self._pool is not None
        return await self._pool.fetchval(sql, *args)

    async def node_ids(self, pid: int) -> list[str]:
        """Every id a process has held (it gets a new one when it rejoins)."""
        rows = await self.rows("SELECT id FROM nodes WHERE info->>'pid' = $1", str(pid))
        return [r["id"] for r in rows]

    async def phases(self, owner: str) -> dict[str, int]:
        """Active calls of `owner` per phase: leg1 ringing, leg2 ringing, bridged."""
        rows = await self.rows(
            """
            SELECT f.status AS f, t.status AS t FROM calls c
            JOIN legs f ON f.call_sid = c.sid AND f.side = 'from'
            LEFT JOIN legs t ON t.call_sid = c.sid AND t.side = 'to'
            WHERE c.owner_node = $1 AND c.state = 'active'
            """,
            owner,
        )
        counts = {"leg1": 0, "leg2": 0, "bridged": 0}
        for r in rows:
            if r["t"] == "in-progress":
                counts["bridged"] += 1
            elif r["t"] == "ringing":
                counts["leg2"] += 1
            elif r["f"] == "ringing":
                counts["leg1"] += 1
        return counts

    async def agents_on_two_active_calls(self) -> list[str]:
        rows = await self.rows(
            "SELECT from_uri FROM calls WHERE state = 'active' AND direction = 'outbound' "
            "GROUP BY from_uri HAVING count(*) > 1"
        )
        return [r["from_uri"] for r in rows]


def log_events(server: Server, message: str) -> list[dict[str, Any]]:
    """The JSON log records of `server` (every life of it) whose message is `message`."""
    found: list[dict[str, Any]] = []
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        if message not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == message:
            found.append(record)
    return found


async def wait_until(
    what: str, check: Callable[[], Awaitable[tuple[bool, Any]]], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        ok, detail = await check()
        if ok:
            return
        assert time.monotonic() < deadline, f"{what} (after {timeout_s}s): {detail}"
        await asyncio.sleep(0.2)


async def place(
    client: httpx.AsyncClient,
    server: Server,
    agent: str,
    customer: str,
    callbacks: list[dict[str, str]],
) -> httpx.Response:
    return await client.post(
        f"{server.base_url}/v3/accounts/{ACCOUNT}/calls",
        json={
            "from": {"contact_uri": agent, "state_management": True},
            "to": {"contact_uri": customer},
            "virtual_number": EXOPHONE,
            "attempt_time_out": 600,
            "max_time_limit": 3600,
            "status_callback": callbacks,
        },
        headers=AUTH,
    )


async def set_phones(
    client: httpx.AsyncClient, server: Server, numbers: Iterable[str], **behaviour: Any
) -> None:
    async def one(number: str) -> None:
        r = await client.put(
            f"{server.base_url}/sim/v1/numbers/{path_uri(number)}", json=behaviour, headers=AUTH
        )
        assert r.status_code == 200, r.text

    await gather_bounded([one(n) for n in numbers])


async def phone_state(client: httpx.AsyncClient, server: Server, number: str) -> str:
    r = await client.get(f"{server.base_url}/sim/v1/numbers/{path_uri(number)}", headers=AUTH)
    assert r.status_code == 200, r.text
    state: str = r.json()["state"]
    return state


async def gather_bounded(work: list[Awaitable[Any]], limit: int = 32) -> list[Any]:
    slots = asyncio.Semaphore(limit)

    async def run(item: Awaitable[Any]) -> Any:
        async with slots:
            return await item

    return await asyncio.gather(*(run(w) for w in work))


def stall(server: Server) -> None:
    """Freeze the node (SIGSTOP): its event loop, heartbeats and calls all stop."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)


def resume(server: Server) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGCONT)
