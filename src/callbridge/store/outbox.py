"""The durable status-callback outbox: enqueue in the caller's transaction, claim due rows under a
lease (SKIP LOCKED on PostgreSQL), record attempts, and read, replay or dead-letter deliveries.

Events for the same (call_sid, url) go out in insertion order: a row is not claimable while an
earlier row for the same pair is still pending. All datetimes are aware UTC; SQLite hands back
naive values, which are read as UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import Row, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callbridge.domain.callbacks import build_payload
from callbridge.domain.options import CallbackEvent, StatusCallback
from callbridge.ids import new_sid
from callbridge.store.bulk import insert_rows
from callbridge.store.tables import callback_attempts, outbox

GONE_PREFIX = "gone:"
"""`last_error` of rows dead because their URL answered 410; later events for the same call and
URL are dead on arrival (the tables have no separate flag, so this prefix is the marker)."""
GONE_ERROR = f"{GONE_PREFIX} the receiver answered HTTP 410 Gone"
GONE_FOLLOWER_ERROR = f"{GONE_PREFIX} an earlier event for this call and URL got HTTP 410 Gone"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_sid: str
    account_sid: str
    call_sid: str
    event_type: str
    url: str
    method: str
    content_type: str
    payload: dict[str, Any]
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime
    claimed_by: str | None
    claimed_until: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    id: int
    outbox_id: int
    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: float | None
    error: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One outbox row with its attempt history, oldest first."""

    row: OutboxRow
    attempts: tuple[AttemptRow, ...]


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


def to_utc(value: datetime) -> datetime:
    """Aware UTC; a naive value (SQLite) is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else to_utc(value)


def _row(r: Row[Any] | Mapping[str, Any]) -> OutboxRow:
    m = r._mapping if isinstance(r, Row) else r
    return OutboxRow(
        id=int(m["id"]),
        event_sid=m["event_sid"],
        account_sid=m["account_sid"],
        call_sid=m["call_sid"],
        event_type=m["event_type"],
        url=m["url"],
        method=m["method"],
        content_type=m["content_type"],
        payload=dict(m["payload"]),
        status=OutboxStatus(m["status"]),
        attempts=int(m["attempts"]),
        next_attempt_at=to_utc(m["next_attempt_at"]),
        claimed_by=m["claimed_by"],
        claimed_until=_opt_utc(m["claimed_until"]),
        last_error=m["last_error"],
        created_at=to_utc(m["created_at"]),
        delivered_at=_opt_utc(m["delivered_at"]),
    )


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
        next_attempt_at=_opt_utc(m["next_attempt_at"]),
    )


# --- enqueue ---------------------------------------------------------------------------------


async def enqueue_events(
    conn: AsyncConnection,
    *,
    account_sid: str,
    call_sid: str,
    event_type: CallbackEvent | str,
    callbacks: Sequence[StatusCallback],
    call_details: Mapping[str, Any],
    now: datetime,
) -> list[str]:
    """Insert one pending row per callback subscribed to `event_type`; returns their event sids.

    Call inside the transaction that records the call's state change, then wake the worker after
    commit. Does no network I/O: URLs were checked when the call was accepted and are checked
    again at send time. An event for a (call, URL) that already answered 410 is stored dead.
    """
    event = CallbackEvent(event_type)
    matching = [cb for cb in callbacks if cb.event == event]
    if not matching:
        return []
    now = to_utc(now)
    payload = build_payload(event, call_details)
    urls = sorted({cb.url for cb in matching})
    gone_rows = await conn.execute(
        select(outbox.c.url)
        .where(
            outbox.c.call_sid == call_sid,
            outbox.c.url.in_(urls),
            outbox.c.status == OutboxStatus.DEAD.value,
            outbox.c.last_error.like(f"{GONE_PREFIX}%"),
        )
        .distinct()
    )
    gone = {r[0] for r in gone_rows}
    rows: list[dict[str, Any]] = []
    for cb in matching:
        is_gone = cb.url in gone
        rows.append(
            {
                "event_sid": new_sid(),
                "account_sid": account_sid,
                "call_sid": call_sid,
                "event_type": event.value,
                "url": cb.url,
                "method": cb.method.value,
                "content_type": cb.content_type.value,
                "payload": payload,
                "status": (OutboxStatus.DEAD if is_gone else OutboxStatus.PENDING).value,
                "attempts": 0,
                "next_attempt_at": now,
                "last_error": GONE_FOLLOWER_ERROR if is_gone else None,
                "created_at": now,
            }
        )
    await conn.execute(outbox.insert(), rows)
    return [r["event_sid"] for r in rows]


@dataclass(frozen=True, slots=True)
class EventToEnqueue:
    account_sid: str
    call_sid: str
    event_type: CallbackEvent
    callbacks: Sequence[StatusCallback]
    call_details: Mapping[str, Any]
    now: datetime


_OUTBOX_COLUMNS = (
    "event_sid",
    "account_sid",
    "call_sid",
    "event_type",
    "url",
    "method",
    "content_type",
    "payload",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "created_at",
)


async def enqueue_events_many(conn: AsyncConnection, events: Sequence[EventToEnqueue]) -> int:
    """`enqueue_events` for many calls' events at once (the engine's group commit): one query
    for earlier 410s, one multi-row insert, rows in the order given. Returns rows written."""
    wanted = [(e, [cb for cb in e.callbacks if cb.event == e.event_type]) for e in events]
    wanted = [(e, cbs) for e, cbs in wanted if cbs]
    if not wanted:
        return 0
    call_sids = sorted({e.call_sid for e, _ in wanted})
    gone_rows = await conn.execute(
        select(outbox.c.call_sid, outbox.c.url)
        .where(
            outbox.c.call_sid.in_(call_sids),
            outbox.c.status == OutboxStatus.DEAD.value,
            outbox.c.last_error.like(f"{GONE_PREFIX}%"),
        )
        .distinct()
    )
    gone = {(r[0], r[1]) for r in gone_rows}
    rows: list[tuple[Any, ...]] = []
    for event, matching in wanted:
        now = to_utc(event.now)
        payload = build_payload(event.event_type, event.call_details)
        for cb in matching:
            is_gone = (event.call_sid, cb.url) in gone
            rows.append(
                (
                    new_sid(),
                    event.account_sid,
                    event.call_sid,
                    event.event_type.value,
                    cb.url,
                    cb.method.value,
                    cb.content_type.value,
                    payload,
                    (OutboxStatus.DEAD if is_gone else OutboxStatus.PENDING).value,
                    0,
                    now,
                    GONE_FOLLOWER_ERROR if is_gone else None,
                    now,
                )
            )
    await insert_rows(conn, outbox, _OUTBOX_COLUMNS, rows)
    return len(rows)


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
        rows = [_row(r) for r in result]
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
            "next_attempt_at": _opt_utc(next_attempt_at),
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
                "next_attempt_at": _opt_utc(o.next_attempt_at) if o.action == "retry" else None,
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
    rows = [_row(r) for r in result]
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
    row = _row(first)
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
    return None if first is None else _row(first)


async def count_by_status(conn: AsyncConnection) -> dict[str, int]:
    """Rows per status, e.g. for metrics: {"pending": n, "delivered": n, "dead": n}."""
    result = await conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))
    counts = {s.value: 0 for s in OutboxStatus}
    for status, n in result:
        counts[str(status)] = int(n)
    return counts
