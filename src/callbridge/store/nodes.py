"""Server processes and their heartbeats: the leases behind calls and busy marks.

A node row is live while `dead_at` is NULL. A peer declares a node dead by setting `dead_at`,
only if its heartbeat is still older than the cutoff (one conditional update, so a node that
renewed in the meantime is never declared dead), and a dead node can never renew: its
heartbeat finds no live row and the node knows it lost its lease.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import CallState
from callbridge.store.repo import utc_required
from callbridge.store.tables import calls, nodes


async def register_node(
    conn: AsyncConnection, node_id: str, now: datetime, info: dict[str, Any]
) -> None:
    await conn.execute(
        insert(nodes).values(id=node_id, started_at=now, heartbeat_at=now, info=info)
    )


async def heartbeat(conn: AsyncConnection, node_id: str, now: datetime) -> bool:
    """Renew this node's lease; False if a peer declared it dead (or removed it)."""
    result = await conn.execute(
        update(nodes)
        .where(nodes.c.id == node_id, nodes.c.dead_at.is_(None))
        .values(heartbeat_at=now)
    )
    return bool(result.rowcount)


async def is_live(conn: AsyncConnection, node_id: str) -> bool:
    """Whether `node_id` still holds its lease (no peer declared it dead).

    A plain read, not a lock: a lock here would make the node's own heartbeat wait for the
    writer's transaction. A node only writes calls while its own view of the lease is young
    (see `engine/lease.py`), and peers declare it dead only once it is a whole TTL old."""
    query = select(nodes.c.id).where(nodes.c.id == node_id, nodes.c.dead_at.is_(None))
    return (await conn.execute(query)).first() is not None


async def remove_node(conn: AsyncConnection, node_id: str) -> None:
    await conn.execute(delete(nodes).where(nodes.c.id == node_id))


async def declare_dead(
    conn: AsyncConnection, *, now: datetime, ttl_s: float, except_node: str
) -> list[str]:
    """Mark every node silent for longer than `ttl_s` dead; returns the ids declared now."""
    cutoff = now - timedelta(seconds=ttl_s)
    result = await conn.execute(
        update(nodes)
        .where(
            nodes.c.dead_at.is_(None),
            nodes.c.heartbeat_at < cutoff,
            nodes.c.id != except_node,
        )
        .values(dead_at=now)
        .returning(nodes.c.id)
    )
    return [r[0] for r in result]


async def dead_heartbeats(conn: AsyncConnection) -> dict[str, datetime]:
    """{dead node id: its last heartbeat}: when its calls are taken to have ended."""
    rows = await conn.execute(
        select(nodes.c.id, nodes.c.heartbeat_at).where(nodes.c.dead_at.is_not(None))
    )
    return {r[0]: utc_required(r[1]) for r in rows}


def owner_not_live() -> Any:
    """SQL condition on `calls`: its owner node is unknown, gone or declared dead."""
    return ~exists().where(and_(nodes.c.id == calls.c.owner_node, nodes.c.dead_at.is_(None)))


async def forget_finished_dead(conn: AsyncConnection) -> int:
    """Delete dead nodes none of whose calls is still active; returns how many."""
    still_active = exists().where(
        and_(calls.c.owner_node == nodes.c.id, calls.c.state == CallState.ACTIVE.value)
    )
    result = await conn.execute(delete(nodes).where(nodes.c.dead_at.is_not(None), ~still_active))
    return int(result.rowcount or 0)


async def lease_states(
    conn: AsyncConnection, now: datetime, ttl_s: float
) -> tuple[list[str], list[str]]:
    """(live node ids, expired ones): expired = silent past the TTL or declared dead and not
    yet forgotten (its calls are still being ended)."""
    cutoff = now - timedelta(seconds=ttl_s)
    live: list[str] = []
    expired: list[str] = []
    rows = await conn.execute(select(nodes.c.id, nodes.c.heartbeat_at, nodes.c.dead_at))
    for node_id, beat, dead_at in rows:
        fresh = dead_at is None and utc_required(beat) >= cutoff
        (live if fresh else expired).append(node_id)
    return live, expired
