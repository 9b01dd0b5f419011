"""The durable status-callback outbox: its row types, and enqueueing events in the caller's
transaction. Claiming and outcomes live in `outbox_delivery`, reading and replay in `outbox_log`.

All datetimes are aware UTC; SQLite hands back naive values, which are read as UTC.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Row, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.callbacks import build_payload
from callbridge.domain.options import CallbackEvent, StatusCallback
from callbridge.ids import new_sid
from callbridge.store.bulk import insert_rows
from callbridge.store.tables import outbox

log = logging.getLogger(__name__)

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


def to_utc(value: datetime) -> datetime:
    """Aware UTC; a naive value (SQLite) is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def opt_utc(value: datetime | None) -> datetime | None:
    """`to_utc`, passing None through."""
    return None if value is None else to_utc(value)


def outbox_row(r: Row[Any] | Mapping[str, Any]) -> OutboxRow:
    """An `outbox` table row as an `OutboxRow`."""
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
        claimed_until=opt_utc(m["claimed_until"]),
        last_error=m["last_error"],
        created_at=to_utc(m["created_at"]),
        delivered_at=opt_utc(m["delivered_at"]),
    )


# --- enqueue ---------------------------------------------------------------------------------


def terminal_key(url: str) -> str:
    """The `terminal_key` of a terminal event for `url`: its unique key within the call."""
    return hashlib.sha256(url.encode()).hexdigest()


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
    "terminal_key",
)


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
    event = EventToEnqueue(
        account_sid, call_sid, CallbackEvent(event_type), callbacks, call_details, now
    )
    return await enqueue_events_many(conn, [event])


async def enqueue_events_many(conn: AsyncConnection, events: Sequence[EventToEnqueue]) -> list[str]:
    """`enqueue_events` for many calls' events at once (the engine's group commit): one query
    for earlier 410s and terminal events, one multi-row insert, rows in the order given.
    Returns the event sids written.

    A call gets at most one terminal event per URL: one already in the table (or earlier in
    `events`) is not written again, and the unique `terminal_key` refuses a concurrent writer's
    duplicate (the insert skips it), so no path can report a call's end twice."""
    wanted = [(e, [cb for cb in e.callbacks if cb.event == e.event_type]) for e in events]
    wanted = [(e, cbs) for e, cbs in wanted if cbs]
    if not wanted:
        return []
    call_sids = sorted({e.call_sid for e, _ in wanted})
    known = await conn.execute(
        select(outbox.c.call_sid, outbox.c.url, outbox.c.terminal_key).where(
            outbox.c.call_sid.in_(call_sids),
            or_(
                outbox.c.terminal_key.is_not(None),
                and_(
                    outbox.c.status == OutboxStatus.DEAD.value,
                    outbox.c.last_error.like(f"{GONE_PREFIX}%"),
                ),
            ),
        )
    )
    gone: set[tuple[str, str]] = set()
    terminal_done: set[tuple[str, str]] = set()
    for sid, url, key in known:
        if key is not None:
            terminal_done.add((sid, key))
        else:
            gone.add((sid, url))
    rows: list[tuple[Any, ...]] = []
    for event, matching in wanted:
        now = to_utc(event.now)
        payload = build_payload(event.event_type, event.call_details)
        for cb in matching:
            key = None
            if event.event_type is CallbackEvent.TERMINAL:
                key = terminal_key(cb.url)
                if (event.call_sid, key) in terminal_done:
                    log.warning(
                        "terminal callback already queued; not queued again",
                        extra={"call_sid": event.call_sid},
                    )
                    continue
                terminal_done.add((event.call_sid, key))
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
                    key,
                )
            )
    await insert_rows(conn, outbox, _OUTBOX_COLUMNS, rows, skip_conflicts=True)
    return [r[0] for r in rows]
