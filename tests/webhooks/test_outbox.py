"""The outbox store on a real SQLite file (and PostgreSQL when configured): enqueue, ordered
claims with leases, outcomes, dead-lettering, listing and replay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.domain.options import CallbackEvent, CallbackMethod, StatusCallback
from callbridge.store.outbox import GONE_FOLLOWER_ERROR, OutboxRow, OutboxStatus, enqueue_events
from callbridge.store.outbox_delivery import (
    Action,
    AttemptOutcome,
    claim_due,
    mark_dead,
    mark_delivered,
    record_attempt,
    record_outcomes,
    reschedule,
)
from callbridge.store.outbox_log import count_by_status, get_delivery, list_deliveries, replay
from callbridge.store.tables import outbox

T0 = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)
URL_A = "https://a.example/hook"
URL_B = "https://b.example/hook"
BOTH = (
    StatusCallback(CallbackEvent.ANSWERED, URL_A),
    StatusCallback(CallbackEvent.TERMINAL, URL_A),
    StatusCallback(CallbackEvent.TERMINAL, URL_B, CallbackMethod.GET),
)


async def enqueue(
    engine: AsyncEngine,
    event: CallbackEvent,
    call_sid: str = "call1",
    callbacks: tuple[StatusCallback, ...] = BOTH,
    now: datetime = T0,
) -> list[str]:
    async with engine.begin() as conn:
        return await enqueue_events(
            conn,
            account_sid="acme",
            call_sid=call_sid,
            event_type=event,
            callbacks=callbacks,
            call_details={"sid": call_sid, "status": event.value},
            now=now,
        )


async def claim(
    engine: AsyncEngine, node: str = "n1", now: datetime = T0, limit: int = 100
) -> list[OutboxRow]:
    return await claim_due(engine, node_id=node, now=now, limit=limit, lease_s=60)


def outcome(
    row: OutboxRow,
    action: Action,
    *,
    error: str | None = None,
    next_at: datetime | None = None,
    status: int = 200,
) -> AttemptOutcome:
    return AttemptOutcome(
        outbox_id=row.id,
        call_sid=row.call_sid,
        url=row.url,
        attempt=row.attempts,
        started_at=T0,
        finished_at=T0,
        status_code=status,
        latency_ms=3.0,
        error=error,
        action=action,
        next_attempt_at=next_at,
    )


async def test_enqueue_writes_one_pending_row_per_matching_callback(engine: AsyncEngine) -> None:
    sids = await enqueue(engine, CallbackEvent.TERMINAL)
    assert len(sids) == 2 and len(set(sids)) == 2
    async with engine.connect() as conn:
        records = await list_deliveries(conn, "acme", "call1")
    rows = [r.row for r in records]
    assert [r.event_sid for r in rows] == sids
    assert [(r.url, r.method) for r in rows] == [(URL_A, "POST"), (URL_B, "GET")]
    for row in rows:
        assert row.status is OutboxStatus.PENDING
        assert row.attempts == 0
        assert row.next_attempt_at == T0 and row.next_attempt_at.tzinfo is not None
        assert row.payload == {
            "event_details": {"event_type": "terminal"},
            "call_details": {"sid": "call1", "status": "terminal"},
        }


async def test_enqueue_without_matching_callbacks_writes_nothing(engine: AsyncEngine) -> None:
    only_terminal = (StatusCallback(CallbackEvent.TERMINAL, URL_A),)
    assert await enqueue(engine, CallbackEvent.ANSWERED, callbacks=only_terminal) == []
    async with engine.connect() as conn:
        assert (await count_by_status(conn))["pending"] == 0


async def test_enqueue_rolls_back_with_the_callers_transaction(engine: AsyncEngine) -> None:
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await enqueue_events(
                conn,
                account_sid="acme",
                call_sid="call1",
                event_type="terminal",
                callbacks=BOTH,
                call_details={},
                now=T0,
            )
            raise RuntimeError("the call state change failed")
    async with engine.connect() as conn:
        assert await list_deliveries(conn, "acme", "call1") == []


async def test_later_event_for_same_call_and_url_waits_for_the_earlier(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.ANSWERED)
    await enqueue(engine, CallbackEvent.TERMINAL)
    claimed = await claim(engine)
    # answered→A and terminal→B; terminal→A waits behind answered→A.
    assert [(r.event_type, r.url) for r in claimed] == [("answered", URL_A), ("terminal", URL_B)]
    assert all(r.attempts == 1 and r.claimed_by == "n1" for r in claimed)
    assert await claim(engine, "n2") == []
    async with engine.begin() as conn:
        assert await mark_delivered(conn, outbox_id=claimed[0].id, now=T0, node_id="n1")
    (nxt,) = await claim(engine, "n2")
    assert (nxt.event_type, nxt.url) == ("terminal", URL_A)


async def test_pending_retry_of_an_earlier_event_blocks_the_later(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.ANSWERED)
    await enqueue(engine, CallbackEvent.TERMINAL)
    first = (await claim(engine))[0]
    async with engine.begin() as conn:
        await reschedule(
            conn, outbox_id=first.id, next_attempt_at=T0 + timedelta(seconds=2), error="HTTP 500"
        )
    # Nothing for URL A is due: the retry is in 2 s and terminal→A waits behind it.
    assert await claim(engine, now=T0 + timedelta(seconds=1)) == []
    (again,) = await claim(engine, now=T0 + timedelta(seconds=2))
    assert again.id == first.id and again.attempts == 2


async def test_other_calls_are_not_blocked(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.ANSWERED, call_sid="call1")
    await enqueue(engine, CallbackEvent.ANSWERED, call_sid="call2")
    assert {r.call_sid for r in await claim(engine)} == {"call1", "call2"}


async def test_rows_not_yet_due_are_not_claimed(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.TERMINAL, now=T0 + timedelta(seconds=5))
    assert await claim(engine) == []
    assert len(await claim(engine, now=T0 + timedelta(seconds=5))) == 2


async def test_claim_limit_takes_the_oldest_due_first(engine: AsyncEngine) -> None:
    for i in range(5):
        await enqueue(
            engine, CallbackEvent.TERMINAL, call_sid=f"c{i}", now=T0 + timedelta(seconds=i)
        )
    claimed = await claim(engine, now=T0 + timedelta(minutes=1), limit=3)
    assert [r.call_sid for r in claimed] == ["c0", "c0", "c1"]


async def test_an_expired_lease_is_claimed_again(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.ANSWERED)
    (row,) = await claim(engine, "n1")
    assert await claim(engine, "n2", now=T0 + timedelta(seconds=59)) == []
    (again,) = await claim(engine, "n2", now=T0 + timedelta(seconds=60))
    assert again.id == row.id and again.claimed_by == "n2" and again.attempts == 2
    # The first node's late result is recorded as an attempt but does not touch the row.
    async with engine.begin() as conn:
        assert await record_outcomes(conn, [outcome(row, "delivered")], node_id="n1") == 0
    async with engine.connect() as conn:
        record = await get_delivery(conn, "acme", row.id)
    assert record is not None
    assert record.row.status is OutboxStatus.PENDING and record.row.claimed_by == "n2"
    assert len(record.attempts) == 1


async def test_concurrent_claims_never_hand_out_a_row_twice(engine: AsyncEngine) -> None:
    for i in range(60):
        await enqueue(engine, CallbackEvent.TERMINAL, call_sid=f"c{i}")
    batches = await asyncio.gather(*(claim(engine, f"n{i}", limit=20) for i in range(6)))
    ids = [r.id for batch in batches for r in batch]
    assert len(ids) == len(set(ids)) == 120


async def test_outcomes_deliver_retry_and_dead_letter(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.TERMINAL, call_sid="c1")
    await enqueue(engine, CallbackEvent.TERMINAL, call_sid="c2")
    a, b, c, d = await claim(engine)
    later = T0 + timedelta(seconds=2)
    async with engine.begin() as conn:
        n = await record_outcomes(
            conn,
            [
                outcome(a, "delivered"),
                outcome(b, "retry", error="HTTP 503", next_at=later, status=503),
                outcome(c, "dead", error="HTTP 400", status=400),
                outcome(d, "delivered"),
            ],
            node_id="n1",
        )
    assert n == 4
    async with engine.connect() as conn:
        rows = {r.row.id: r for r in await list_deliveries(conn, "acme", "c1")}
        rows |= {r.row.id: r for r in await list_deliveries(conn, "acme", "c2")}
        assert await count_by_status(conn) == {"pending": 1, "delivered": 2, "dead": 1}
    assert rows[a.id].row.status is OutboxStatus.DELIVERED and rows[a.id].row.delivered_at == T0
    assert rows[b.id].row.next_attempt_at == later and rows[b.id].row.claimed_by is None
    assert rows[b.id].row.last_error == "HTTP 503"
    assert rows[b.id].attempts[0].next_attempt_at == later
    assert rows[c.id].row.status is OutboxStatus.DEAD and rows[c.id].row.last_error == "HTTP 400"
    assert [x.status_code for x in rows[c.id].attempts] == [400]


async def test_gone_kills_pending_and_future_events_for_that_call_and_url(
    engine: AsyncEngine,
) -> None:
    await enqueue(engine, CallbackEvent.ANSWERED)
    await enqueue(engine, CallbackEvent.TERMINAL)
    first = (await claim(engine))[0]
    assert first.url == URL_A
    async with engine.begin() as conn:
        await record_outcomes(conn, [outcome(first, "gone", status=410)], node_id="n1")
    # A later event for both URLs (not terminal: a call has one terminal event per URL).
    answered_both = (
        StatusCallback(CallbackEvent.ANSWERED, URL_A),
        StatusCallback(CallbackEvent.ANSWERED, URL_B, CallbackMethod.GET),
    )
    later = await enqueue(engine, CallbackEvent.ANSWERED, callbacks=answered_both)
    async with engine.connect() as conn:
        rows = [r.row for r in await list_deliveries(conn, "acme", "call1")]
    by_url = {(r.event_type, r.url, r.event_sid in later): r for r in rows}
    assert len(by_url) == len(rows) == 5
    assert by_url[("answered", URL_A, False)].status is OutboxStatus.DEAD
    assert by_url[("terminal", URL_A, False)].last_error == GONE_FOLLOWER_ERROR
    assert by_url[("answered", URL_A, True)].status is OutboxStatus.DEAD
    assert by_url[("answered", URL_A, True)].last_error == GONE_FOLLOWER_ERROR
    assert by_url[("terminal", URL_B, False)].status is OutboxStatus.PENDING
    assert by_url[("answered", URL_B, True)].status is OutboxStatus.PENDING
    assert by_url[("answered", URL_B, True)].last_error is None
    # Another call to the same URL is unaffected.
    assert len(await enqueue(engine, CallbackEvent.TERMINAL, call_sid="call2")) == 2
    async with engine.connect() as conn:
        assert {r.row.status for r in await list_deliveries(conn, "acme", "call2")} == {
            OutboxStatus.PENDING
        }


async def test_single_row_helpers(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.ANSWERED)
    (row,) = await claim(engine)
    async with engine.begin() as conn:
        await record_attempt(
            conn,
            outbox_id=row.id,
            attempt=1,
            started_at=T0,
            status_code=None,
            latency_ms=10.0,
            error="ConnectError",
        )
        assert not await mark_dead(conn, outbox_id=row.id, error="x", node_id="someone-else")
        assert await mark_dead(conn, outbox_id=row.id, error="gave up", node_id="n1")
    async with engine.connect() as conn:
        record = await get_delivery(conn, "acme", row.id)
        assert await get_delivery(conn, "other-account", row.id) is None
    assert record is not None and record.row.status is OutboxStatus.DEAD
    assert [a.error for a in record.attempts] == ["ConnectError"]


async def test_replay_resets_the_row_and_keeps_its_event_sid(engine: AsyncEngine) -> None:
    (sid,) = await enqueue(engine, CallbackEvent.ANSWERED)
    (row,) = await claim(engine)
    async with engine.begin() as conn:
        await record_outcomes(conn, [outcome(row, "dead", status=400)], node_id="n1")
    later = T0 + timedelta(hours=1)
    async with engine.begin() as conn:
        assert await replay(conn, "other-account", row.id, later) is None
        replayed = await replay(conn, "acme", row.id, later)
    assert replayed is not None
    assert replayed.event_sid == sid and replayed.id == row.id
    assert replayed.status is OutboxStatus.PENDING and replayed.attempts == 0
    assert replayed.next_attempt_at == later and replayed.last_error is None
    (again,) = await claim(engine, now=later)
    assert again.id == row.id and again.attempts == 1


async def test_replay_leaves_a_pending_row_alone(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.ANSWERED)
    (row,) = await claim(engine)
    async with engine.begin() as conn:
        same = await replay(conn, "acme", row.id, T0 + timedelta(hours=1))
    assert same is not None and same.claimed_by == "n1" and same.attempts == 1


async def test_datetimes_come_back_aware_utc(engine: AsyncEngine) -> None:
    ist = T0.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Kolkata"))
    await enqueue(engine, CallbackEvent.ANSWERED, now=ist)
    async with engine.connect() as conn:
        raw = (await conn.execute(select(outbox.c.created_at))).scalar_one()
        (record,) = await list_deliveries(conn, "acme", "call1")
    assert record.row.created_at == T0 and record.row.created_at.tzinfo is UTC
    assert raw.replace(tzinfo=None) == T0.replace(tzinfo=None)


async def test_a_claim_ignores_rows_of_other_statuses(engine: AsyncEngine) -> None:
    await enqueue(engine, CallbackEvent.TERMINAL)
    async with engine.begin() as conn:
        await conn.execute(update(outbox).values(status="delivered"))
    assert await claim(engine) == []


async def test_a_second_terminal_event_for_the_same_call_and_url_is_never_queued(
    engine: AsyncEngine,
) -> None:
    first = await enqueue(engine, CallbackEvent.TERMINAL)
    again = await enqueue(engine, CallbackEvent.TERMINAL)
    assert len(first) == 2 and again == []
    # Answered events are not unique; another call to the same URL is its own.
    assert len(await enqueue(engine, CallbackEvent.ANSWERED)) == 1
    assert len(await enqueue(engine, CallbackEvent.TERMINAL, call_sid="call2")) == 2
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(outbox.c.call_sid, outbox.c.event_type, outbox.c.url).order_by(outbox.c.id)
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("call1", "terminal", URL_A),
        ("call1", "terminal", URL_B),
        ("call1", "answered", URL_A),
        ("call2", "terminal", URL_A),
        ("call2", "terminal", URL_B),
    ]


async def test_the_unique_key_refuses_a_concurrent_writers_duplicate_terminal_event(
    engine: AsyncEngine,
) -> None:
    """Two transactions that both miss each other's row (neither committed yet): the unique
    key makes the second wait for the first and then skip its duplicate."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers before they read (BEGIN IMMEDIATE)")
    only_a = (StatusCallback(CallbackEvent.TERMINAL, URL_A),)
    async with engine.begin() as first:
        await enqueue_events(
            first,
            account_sid="acme",
            call_sid="call1",
            event_type=CallbackEvent.TERMINAL,
            callbacks=only_a,
            call_details={"sid": "call1", "by": "first"},
            now=T0,
        )
        second = asyncio.create_task(enqueue(engine, CallbackEvent.TERMINAL, callbacks=only_a))
        async with engine.connect() as watcher:
            async with asyncio.timeout(10):
                while not await watcher.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ):
                    await watcher.rollback()
                    await asyncio.sleep(0.01)
    await second
    async with engine.connect() as conn:
        payloads = (
            (await conn.execute(select(outbox.c.payload).where(outbox.c.event_type == "terminal")))
            .scalars()
            .all()
        )
    assert [p["call_details"]["by"] for p in payloads] == ["first"]
