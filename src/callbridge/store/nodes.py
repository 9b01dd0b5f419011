"""Live server processes and their heartbeats: the leases behind calls and busy marks."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.store.repo import utc_required
from callbridge.store.tables import nodes


async def register_node(
    conn: AsyncConnection, node_id: str, now: datetime, info: dict[str, Any]
) -> None:
    await conn.execute(
        insert(nodes).values(id=node_id, started_at=now, heartbeat_at=now, info=info)
    )


async def heartbeat(conn: AsyncConnection, node_id: str, now: datetime) -> bool:
    """Renew this node's lease; False if the row was removed (we were declared dead)."""
    result = await conn.execute(update(nodes).where(nodes.c.id == node_id).values(heartbeat_at=now))
    return bool(result.rowcount)


async def remove_node(conn: AsyncConnection, node_id: str) -> None:
    await conn.execute(delete(nodes).where(nodes.c.id == node_id))


async def live_and_dead_nodes(
    conn: AsyncConnection, now: datetime, ttl_s: float
) -> tuple[list[str], dict[str, datetime]]:
    """(ids of live nodes, {dead node id: its last heartbeat})."""
    cutoff = now - timedelta(seconds=ttl_s)
    live: list[str] = []
    dead: dict[str, datetime] = {}
    for node_id, beat in (await conn.execute(select(nodes.c.id, nodes.c.heartbeat_at))).all():
        at = utc_required(beat)
        if at >= cutoff:
            live.append(node_id)
        else:
            dead[node_id] = at
    return live, dead
