"""Delivering outbox rows: claim due rows under a lease (SKIP LOCKED on PostgreSQL), record
attempts, and mark rows delivered, rescheduled or dead, fenced on the node that holds the claim.

Events for the same (call_sid, url) go out in insertion order: a row is not claimable while an
earlier row for the same pair is still pending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callbridge.store.outbox import (
    GONE_ERROR,
    GONE_FOLLOWER_ERROR,
    OutboxRow,
    OutboxStatus,
    opt_utc,
    outbox_row,
    to_utc,
)
from callbridge.store.tables import callback_attempts, outbox

Action = Literal["delivered", "retry", "dead", "gone"]


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """One finished attempt and what to do with its row; applied in batches by `record_outcomes`."""

    outbox_id: int
    call_sid: str
    url: str
    attempt: int
    started_at: datetime
    finished_at: datetime
    status_code: int | None
    latency_ms: float | None
    error: str | None
    action: Action
    next_attempt_at: datetime | None = None  # for "retry"


# --- claim -----------------------------------------------------------------------------------


async def claim_due(
    engine: AsyncEngine, *, node_id: str, now: datetime, limit: int, lease_s: float
) -> list[OutboxRow]:
    """Claim up to `limit` due rows for `node_id` until `now + lease_s`; counts the attempt.

    One statement: `UPDATE … WHERE id IN (SELECT … [FOR UPDATE SKIP LOCKED]) RETURNING …`. A row is
    due when pending, `next_attempt_at <= now`, its lease (if any) expired, and no earlier row for
    the same (call_sid, url) is pending. Returned oldest due first.
    """
    if limit <= 0:
        return []
    now = to_utc(now)
    cand = outbox.alias("cand")
    earlier = outbox.alias("earlier")
    blocked = (
        select(earlier.c.id)
        .where(
            earlier.c.call_sid == cand.c.call_sid,
            earlier.c.url == cand.c.url,
            earlier.c.status == OutboxStatus.PENDING.value,
            earlier.c.id < cand.c.id,
        )
        .exists()
    )
    due = (
        select(cand.c.id)
        .where(
            cand.c.status == OutboxStatus.PENDING.value,
            cand.c.next_attempt_at <= now,
            or_(cand.c.claimed_until.is_(None), cand.c.claimed_until <= now),
            ~blocked,
        )
        .order_by(cand.c.next_attempt_at, cand.c.id)
        .limit(limit)
    )
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True, of=cand)
    stmt = (
        update(outbox)
        .where(outbox.c.id.in_(due.scalar_subquery()))
        .values(
            claimed_by=node_id,
            claimed_until=now + timedelta(seconds=lease_s),
            attempts=outbox.c.attempts + 1,
        )
        .returning(*outbox.c)
    )
    async with engine.begin() as conn:
        result = await conn.execute(stmt)
        rows = [outbox_row(r) for r in result]
    rows.sort(key=lambda r: (r.next_attempt_at, r.id))
    return rows


# --- outcomes --------------------------------------------------------------------------------


async def record_attempt(
    conn: AsyncConnection,
    *,
    outbox_id: int,
    attempt: int,
    started_at: datetime,
    status_code: int | None,
    latency_ms: float | None,
    error: str | None,
    next_attempt_at: datetime | None = None,
) -> None:
    await conn.execute(
        callback_attempts.insert(),
        {
            "outbox_id": outbox_id,
            "attempt": attempt,
            "started_at": to_utc(started_at),
            "status_code": status_code,
            "latency_ms": latency_ms,
            "error": error,
            "next_attempt_at": opt_utc(next_attempt_at),
        },
    )


def _fenced(outbox_id: int, node_id: str | None) -> list[Any]:
    conds: list[Any] = [outbox.c.id == outbox_id]
    if node_id is not None:
        conds.append(outbox.c.claimed_by == node_id)
    return conds


async def mark_delivered(
    conn: AsyncConnection, *, outbox_id: int, now: datetime, node_id: str | None = None
) -> bool:
    """Delivered; with `node_id`, only if that node still holds the claim. True if updated."""
    result = await conn.execute(
        update(outbox)
        .where(*_fenced(outbox_id, node_id))
        .values(
            status=OutboxStatus.DELIVERED.value,
            delivered_at=to_utc(now),
            last_error=None,
            claimed_by=None,
            claimed_until=None,
        )
    )
    return bool(result.rowcount)


async def reschedule(
    conn: AsyncConnection,
    *,
    outbox_id: int,
    next_attempt_at: datetime,
    error: str | None,
    node_id: str | None = None,
) -> bool:
    result = await conn.execute(
        update(outbox)
        .where(*_fenced(outbox_id, node_id))
        .values(
            next_attempt_at=to_utc(next_attempt_at),
            last_error=error,
            claimed_by=None,
            claimed_until=None,
        )
    )
    return bool(result.rowcount)


async def mark_dead(
    conn: AsyncConnection,
    *,
    outbox_id: int,
    error: str,
    gone: bool = False,
    node_id: str | None = None,
) -> bool:
    """Dead-letter a row. With `gone` (HTTP 410), every other pending row for the same call and
    URL is dead too, and so will be later events for them."""
    result = await conn.execute(
        update(outbox)
        .where(*_fenced(outbox_id, node_id))
        .values(
            status=OutboxStatus.DEAD.value,
            last_error=GONE_ERROR if gone else error,
            claimed_by=None,
            claimed_until=None,
        )
        .returning(outbox.c.call_sid, outbox.c.url)
    )
    hit = result.first()
    if hit is None:
        return False
    if gone:
        await _kill_followers(conn, [(hit[0], hit[1], outbox_id)])
    return True


async def _kill_followers(conn: AsyncConnection, pairs: Sequence[tuple[str, str, int]]) -> None:
    await conn.execute(
        update(outbox)
        .where(
            outbox.c.call_sid == bindparam("b_call"),
            outbox.c.url == bindparam("b_url"),
            outbox.c.id != bindparam("b_id"),
            outbox.c.status == OutboxStatus.PENDING.value,
        )
        .values(status=OutboxStatus.DEAD.value, last_error=GONE_FOLLOWER_ERROR),
        [{"b_call": c, "b_url": u, "b_id": i} for c, u, i in pairs],
    )


async def record_outcomes(
    conn: AsyncConnection, outcomes: Sequence[AttemptOutcome], *, node_id: str
) -> int:
    """Apply a batch of finished attempts in the caller's transaction (executemany per kind).

    Row updates are fenced on `claimed_by = node_id`: a node whose lease expired records its
    attempt but leaves the row to the node that re-claimed it. Returns the rows it updated.
    """
    if not outcomes:
        return 0
    await conn.execute(
        callback_attempts.insert(),
        [
            {
                "outbox_id": o.outbox_id,
                "attempt": o.attempt,
                "started_at": to_utc(o.started_at),
                "status_code": o.status_code,
                "latency_ms": o.latency_ms,
                "error": o.error,
                "next_attempt_at": opt_utc(o.next_attempt_at) if o.action == "retry" else None,
            }
            for o in outcomes
        ],
    )
    held = await conn.execute(
        select(outbox.c.id).where(
            outbox.c.id.in_([o.outbox_id for o in outcomes]), outbox.c.claimed_by == node_id
        )
    )
    owned = {int(r[0]) for r in held}
    # The fence is in each UPDATE too: the SELECT above only tells us what to skip and count.
    fence = (outbox.c.id == bindparam("b_id"), outbox.c.claimed_by == node_id)
    cleared = {"claimed_by": None, "claimed_until": None}
    mine = [o for o in outcomes if o.outbox_id in owned]
    delivered = [o for o in mine if o.action == "delivered"]
    if delivered:
        await conn.execute(
            update(outbox)
            .where(*fence)
            .values(
                status=OutboxStatus.DELIVERED.value,
                delivered_at=bindparam("b_at"),
                last_error=None,
                **cleared,
            ),
            [{"b_id": o.outbox_id, "b_at": to_utc(o.finished_at)} for o in delivered],
        )
    retry = [o for o in mine if o.action == "retry"]
    if retry:
        await conn.execute(
            update(outbox)
            .where(*fence)
            .values(next_attempt_at=bindparam("b_next"), last_error=bindparam("b_err"), **cleared),
            [
                {
                    "b_id": o.outbox_id,
                    "b_next": to_utc(_required(o.next_attempt_at)),
                    "b_err": o.error,
                }
                for o in retry
            ],
        )
    dead = [o for o in mine if o.action in ("dead", "gone")]
    if dead:
        await conn.execute(
            update(outbox)
            .where(*fence)
            .values(status=OutboxStatus.DEAD.value, last_error=bindparam("b_err"), **cleared),
            [
                {"b_id": o.outbox_id, "b_err": GONE_ERROR if o.action == "gone" else o.error}
                for o in dead
            ],
        )
    gone = [(o.call_sid, o.url, o.outbox_id) for o in mine if o.action == "gone"]
    if gone:
        await _kill_followers(conn, gone)
    return len(mine)


def _required(value: datetime | None) -> datetime:
    if value is None:
        raise ValueError("a retry outcome needs next_attempt_at")
    return value
