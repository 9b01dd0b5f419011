"""The delivery worker end to end: real receiver on 127.0.0.1, real database, ManualClock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from callbridge.clock import ManualClock
from callbridge.domain.options import (
    CallbackContentType,
    CallbackEvent,
    CallbackMethod,
    StatusCallback,
)
from callbridge.settings import Settings
from callbridge.store.outbox import DeliveryRecord, OutboxStatus, enqueue_events
from callbridge.store.outbox_log import list_deliveries, replay
from callbridge.store.tables import outbox
from callbridge.webhooks.schedule import RETRY_DELAYS_S
from callbridge.webhooks.secrets import make_secret_lookup, rotate_secret
from callbridge.webhooks.ssrf import UrlGuard
from callbridge.webhooks.worker import DeliveryWorker

from .helpers import NoJitter, Receiver, Reply, add_account


@pytest.fixture
def clock() -> ManualClock:
    # Near real time, so the reference library's 5-minute timestamp tolerance holds.
    return ManualClock(start=datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def secret(engine: AsyncEngine) -> str:
    return await add_account(engine)


@pytest.fixture
async def worker(
    engine: AsyncEngine, clock: ManualClock, secret: str
) -> AsyncIterator[DeliveryWorker]:
    w = DeliveryWorker(
        engine,
        clock,
        "node-a",
        secret_lookup=make_secret_lookup(engine),
        guard=UrlGuard(True),
        timeout_s=2.0,
        rng=NoJitter(),
    )
    try:
        yield w
    finally:
        await w.stop()


async def enqueue(
    engine: AsyncEngine,
    clock: ManualClock,
    event: CallbackEvent,
    callbacks: tuple[StatusCallback, ...],
    call_sid: str = "call1",
) -> list[str]:
    async with engine.begin() as conn:
        return await enqueue_events(
            conn,
            account_sid="acme",
            call_sid=call_sid,
            event_type=event,
            callbacks=callbacks,
            call_details={"sid": call_sid, "status": "completed" if event == "terminal" else None},
            now=clock.now(),
        )


def both(url: str, **kw: object) -> tuple[StatusCallback, ...]:
    return (
        StatusCallback(CallbackEvent.ANSWERED, url, **kw),  # type: ignore[arg-type]
        StatusCallback(CallbackEvent.TERMINAL, url, **kw),  # type: ignore[arg-type]
    )


async def deliveries(engine: AsyncEngine, call_sid: str = "call1") -> list[DeliveryRecord]:
    async with engine.connect() as conn:
        return await list_deliveries(conn, "acme", call_sid)


async def test_receiver_down_for_three_attempts_then_delivers_in_order_once(
    engine: AsyncEngine,
    clock: ManualClock,
    worker: DeliveryWorker,
    receiver: Receiver,
    secret: str,
) -> None:
    callbacks = both(receiver.url())
    answered = await enqueue(engine, clock, CallbackEvent.ANSWERED, callbacks[:1])
    terminal = await enqueue(engine, clock, CallbackEvent.TERMINAL, callbacks[1:])
    await receiver.stop()
    t0 = clock.now()

    assert await worker.drain_once() == 1  # attempt 1, immediately; terminal waits behind it
    for step in (1, 2):  # attempts 2 and 3, after 2 s and 10 s
        await clock.advance(RETRY_DELAYS_S[step] - 0.5)
        assert await worker.drain_once() == 0  # not due yet, and terminal is still blocked
        await clock.advance(0.5)
        assert await worker.drain_once() == 1
    await receiver.start()
    await clock.advance(RETRY_DELAYS_S[3])  # attempt 4, after 1 min: delivered
    assert await worker.drain_once() == 1
    assert await worker.drain_once() == 1  # now terminal goes out
    assert await worker.drain_once() == 0

    assert [r.event_sid for r in receiver.requests] == answered + terminal
    bodies = [json.loads(r.body) for r in receiver.requests]
    assert [b["event_details"]["event_type"] for b in bodies] == ["answered", "terminal"]
    for request in receiver.requests:
        headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
        Webhook(secret).verify(request.body, headers)
        assert request.headers["webhook-id"] == request.event_sid

    first, second = await deliveries(engine)
    assert first.row.status is OutboxStatus.DELIVERED and first.row.attempts == 4
    assert second.row.status is OutboxStatus.DELIVERED and second.row.attempts == 1
    starts = [(a.started_at - t0).total_seconds() for a in first.attempts]
    assert starts == [0, 2, 12, 72]
    assert [a.status_code for a in first.attempts] == [None, None, None, 200]
    assert all("ConnectError" in (a.error or "") for a in first.attempts[:3])
    assert [(a.next_attempt_at - t0).total_seconds() for a in first.attempts[:3]] == [2, 12, 72]  # type: ignore[operator]
    assert first.row.delivered_at == t0 + timedelta(seconds=72)


async def test_event_sid_is_stable_across_retries(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    receiver.replies = [Reply(500), Reply(503)]
    (sid,) = await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    await worker.drain_once()
    await clock.advance(2)
    await worker.drain_once()
    await clock.advance(10)
    await worker.drain_once()
    assert [r.event_sid for r in receiver.requests] == [sid] * 3
    assert {r.headers["webhook-id"] for r in receiver.requests} == {sid}
    timestamps = [int(r.headers["webhook-timestamp"]) for r in receiver.requests]
    assert timestamps[1] - timestamps[0] == 2 and timestamps[2] - timestamps[1] == 10


async def test_multipart_and_get_callbacks_arrive_parsed(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    callbacks = (
        StatusCallback(
            CallbackEvent.TERMINAL,
            receiver.url("/form"),
            content_type=CallbackContentType.MULTIPART,
        ),
        StatusCallback(CallbackEvent.TERMINAL, receiver.url("/get"), method=CallbackMethod.GET),
    )
    await enqueue(engine, clock, CallbackEvent.TERMINAL, callbacks)
    assert await worker.drain_once() == 2
    by_path = {r.path: r for r in receiver.requests}
    assert by_path["/form"].headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="call_details"' in by_path["/form"].body
    assert json.loads(by_path["/get"].query["call_details"][0])["sid"] == "call1"


async def test_rotation_signs_with_both_secrets(
    engine: AsyncEngine,
    clock: ManualClock,
    worker: DeliveryWorker,
    receiver: Receiver,
    secret: str,
) -> None:
    async with engine.begin() as conn:
        new = await rotate_secret(conn, "acme", clock.now())
    assert new is not None
    await enqueue(engine, clock, CallbackEvent.ANSWERED, both(receiver.url())[:1])
    await worker.drain_once()
    (request,) = receiver.requests
    headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
    Webhook(new).verify(request.body, headers)
    Webhook(secret).verify(request.body, headers)


async def test_410_stops_this_call_and_url_but_not_others(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    gone_url, other_url = receiver.url("/gone"), receiver.url("/other")
    receiver.handler = lambda r: Reply(410) if r.path == "/gone" else Reply(200)
    callbacks = both(gone_url) + both(other_url)
    await enqueue(engine, clock, CallbackEvent.ANSWERED, callbacks)
    await enqueue(engine, clock, CallbackEvent.TERMINAL, callbacks)
    await worker.drain()
    await clock.advance(RETRY_DELAYS_S[1])
    assert await worker.drain() == 0
    assert sorted(r.path for r in receiver.requests) == ["/gone", "/other", "/other"]
    status = {(d.row.url, d.row.event_type): d.row for d in await deliveries(engine)}
    assert status[(gone_url, "answered")].status is OutboxStatus.DEAD
    assert status[(gone_url, "terminal")].status is OutboxStatus.DEAD
    assert status[(gone_url, "terminal")].attempts == 0
    assert status[(other_url, "terminal")].status is OutboxStatus.DELIVERED


async def test_redirect_is_a_final_failure_and_never_followed(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    receiver.replies = [Reply(302, {"Location": receiver.url("/moved")})]
    await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    await worker.drain()
    await clock.advance(3600)
    assert await worker.drain() == 0
    assert [r.path for r in receiver.requests] == ["/hook"]
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DEAD
    assert record.row.last_error == "HTTP 302: redirects are not followed"


async def test_other_4xx_is_final(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    receiver.replies = [Reply(400)]
    await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    await worker.drain()
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DEAD and len(record.attempts) == 1


async def test_retry_after_is_honoured(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    receiver.replies = [Reply(429, {"Retry-After": "120"})]
    await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    await worker.drain()
    await clock.advance(119)
    assert await worker.drain() == 0
    await clock.advance(1)
    assert await worker.drain() == 1
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DELIVERED


async def test_dead_letter_after_the_tenth_attempt_and_never_an_eleventh(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    receiver.handler = lambda r: Reply(503)
    await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    t0 = clock.now()
    assert await worker.drain_once() == 1
    for delay in RETRY_DELAYS_S[1:]:
        await clock.advance(delay)
        assert await worker.drain_once() == 1
    await clock.advance(10 * 86400)
    assert await worker.drain_once() == 0
    assert len(receiver.requests) == 10
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DEAD and record.row.attempts == 10
    assert record.row.last_error == "HTTP 503 (gave up after 10 attempts)"
    assert len(record.attempts) == 10 and record.attempts[-1].next_attempt_at is None
    elapsed = (record.attempts[-1].started_at - t0).total_seconds()
    assert elapsed == sum(RETRY_DELAYS_S)

    # An operator replays it once the receiver is fixed: same event sid, delivered.
    receiver.handler = None
    async with engine.begin() as conn:
        await replay(conn, "acme", record.row.id, clock.now())
    assert await worker.drain_once() == 1
    assert receiver.requests[-1].event_sid == record.row.event_sid
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DELIVERED


async def test_a_row_lost_during_its_final_attempt_is_dead_lettered(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    async with engine.begin() as conn:
        await conn.execute(update(outbox).values(attempts=10))
    assert await worker.drain_once() == 1
    assert receiver.requests == []
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DEAD
    assert record.row.last_error == "lease expired during the final attempt"


async def test_private_url_is_refused_at_send_time_and_dead_lettered(
    engine: AsyncEngine, clock: ManualClock, receiver: Receiver, secret: str
) -> None:
    strict = DeliveryWorker(
        engine, clock, "node-s", secret_lookup=make_secret_lookup(engine), guard=UrlGuard(False)
    )
    await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    assert await strict.drain_once() == 1
    await strict.stop()
    assert receiver.requests == []
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DEAD
    assert record.row.last_error and record.row.last_error.startswith("unsafe url:")


async def test_run_delivers_at_once_when_woken_and_stops_gracefully(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    receiver.handler = lambda r: Reply(200, delay_s=0.3)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.05)
    await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    worker.wake()  # the ManualClock never advances: only the wake can trigger the send
    await receiver.wait_for(1)
    await worker.stop()  # in flight: stop waits for it and records it
    await asyncio.wait_for(task, 5)
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DELIVERED
    assert worker.stats.delivered == 1


async def test_run_polls_for_rows_that_become_due(
    engine: AsyncEngine, clock: ManualClock, worker: DeliveryWorker, receiver: Receiver
) -> None:
    receiver.replies = [Reply(500)]
    task = asyncio.create_task(worker.run())
    await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:])
    worker.wake()
    await receiver.wait_for(1)
    for _ in range(50):  # the failed attempt is written back
        if (await deliveries(engine))[0].row.claimed_by is None:
            break
        await asyncio.sleep(0.02)
    for _ in range(20):  # the poll timer runs on the ManualClock: move it in small steps
        await clock.advance(0.5)
        await asyncio.sleep(0.05)
        if len(receiver.requests) >= 2:
            break
    await receiver.wait_for(2)
    await worker.stop()
    await asyncio.wait_for(task, 5)
    (record,) = await deliveries(engine)
    assert record.row.status is OutboxStatus.DELIVERED and record.row.attempts == 2


async def test_two_workers_share_the_outbox_without_duplicates(
    engine: AsyncEngine, clock: ManualClock, receiver: Receiver, secret: str
) -> None:
    workers = [
        DeliveryWorker(
            engine,
            clock,
            f"node-{i}",
            secret_lookup=make_secret_lookup(engine),
            guard=UrlGuard(True),
            claim_batch=7,
        )
        for i in range(2)
    ]
    for i in range(40):
        await enqueue(engine, clock, CallbackEvent.ANSWERED, both(receiver.url())[:1], f"c{i}")
        await enqueue(engine, clock, CallbackEvent.TERMINAL, both(receiver.url())[1:], f"c{i}")
    tasks = [asyncio.create_task(w.run()) for w in workers]
    for w in workers:
        w.wake()
    await receiver.wait_for(80, timeout_s=20)
    await asyncio.sleep(0.1)
    for w in workers:
        await w.stop()
    await asyncio.gather(*tasks)
    sids = [r.event_sid for r in receiver.requests]
    assert len(sids) == len(set(sids)) == 80
    for i in range(40):
        types = [
            json.loads(r.body)["event_details"]["event_type"]
            for r in receiver.requests
            if json.loads(r.body)["call_details"]["sid"] == f"c{i}"
        ]
        assert types == ["answered", "terminal"]
    assert sum(w.stats.delivered for w in workers) == 80


def test_from_settings_uses_the_callback_settings(tmp_path: object) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    settings = Settings(callback_concurrency=8, callback_timeout_s=3, allow_private_urls=True)
    engine = create_async_engine("sqlite+aiosqlite://")
    w = DeliveryWorker.from_settings(settings, engine, ManualClock(), "n")
    assert w._concurrency == 8 and w._timeout_s == 3 and w._guard.allow_private
