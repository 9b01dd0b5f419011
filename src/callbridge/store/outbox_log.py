"""Reading the outbox: a call's deliveries with their attempt history, one delivery, replaying
a finished event, and row counts per status."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.store.outbox import (
    AttemptRow,
    DeliveryRecord,
    OutboxRow,
    OutboxStatus,
    opt_utc,
    outbox_row,
    to_utc,
)
from callbridge.store.tables import callback_attempts, outbox


def _attempt_row(r: Row[Any]) -> AttemptRow:
    m = r._mapping
    return AttemptRow(
        id=int(m["id"]),
        outbox_id=int(m["outbox_id"]),
        attempt=int(m["attempt"]),
        started_at=to_utc(m["started_at"]),
        status_code=m["status_code"],
        latency_ms=m["latency_ms"],
        error=m["error"],
        next_attempt_at=opt_utc(m["next_attempt_at"]),
    )


# --- reading and replay ----------------------------------------------------------------------


async def _attempts_for(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, list[AttemptRow]]:
    by_row: dict[int, list[AttemptRow]] = {i: [] for i in ids}
    if not ids:
        return by_row
    result = await conn.execute(
        select(callback_attempts)
        .where(callback_attempts.c.outbox_id.in_(list(ids)))
        .order_by(callback_attempts.c.id)
    )
    for r in result:
        a = _attempt_row(r)
        by_row[a.outbox_id].append(a)
    return by_row


async def list_deliveries(
    conn: AsyncConnection, account_sid: str, call_sid: str
) -> list[DeliveryRecord]:
    """Every callback event of a call, in creation order, with its attempts."""
    result = await conn.execute(
        select(outbox)
        .where(outbox.c.account_sid == account_sid, outbox.c.call_sid == call_sid)
        .order_by(outbox.c.id)
    )
    rows = [outbox_row(r) for r in result]
    attempts = await _attempts_for(conn, [r.id for r in rows])
    return [DeliveryRecord(r, tuple(attempts[r.id])) for r in rows]


async def get_delivery(
    conn: AsyncConnection, account_sid: str, outbox_id: int
) -> DeliveryRecord | None:
    result = await conn.execute(
        select(outbox).where(outbox.c.account_sid == account_sid, outbox.c.id == outbox_id)
    )
    first = result.first()
    if first is None:
        return None
    row = outbox_row(first)
    attempts = await _attempts_for(conn, [row.id])
    return DeliveryRecord(row, tuple(attempts[row.id]))


async def replay(
    conn: AsyncConnection, account_sid: str, outbox_id: int, now: datetime
) -> OutboxRow | None:
    """Send a delivered or dead event again: the same row is reset to pending, due `now`.

    Resetting (rather than copying) keeps the event's `X-Exotel-Event-Sid`/`webhook-id`, which
    is unique in the table, and its history; the attempt counter restarts at 0 so the replay gets
    the full retry budget (its attempts are numbered from 1 again after the old ones). A pending
    row is left as it is. None when the row does not exist in this account.
    """
    await conn.execute(
        update(outbox)
        .where(
            outbox.c.id == outbox_id,
            outbox.c.account_sid == account_sid,
            outbox.c.status != OutboxStatus.PENDING.value,
        )
        .values(
            status=OutboxStatus.PENDING.value,
            attempts=0,
            next_attempt_at=to_utc(now),
            claimed_by=None,
            claimed_until=None,
            last_error=None,
            delivered_at=None,
        )
    )
    result = await conn.execute(
        select(outbox).where(outbox.c.id == outbox_id, outbox.c.account_sid == account_sid)
    )
    first = result.first()
    return None if first is None else outbox_row(first)


async def count_by_status(conn: AsyncConnection) -> dict[str, int]:
    """Rows per status, e.g. for metrics: {"pending": n, "delivered": n, "dead": n}."""
    result = await conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))
    counts = {s.value: 0 for s in OutboxStatus}
    for status, n in result:
        counts[str(status)] = int(n)
    return counts
