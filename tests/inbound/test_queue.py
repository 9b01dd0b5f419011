"""No agent free: callers wait in a queue with hold audio until an agent frees up or the
maximum wait passes; or hear a message and the call ends."""

from __future__ import annotations

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import running_app
from .helpers import CUSTOMER, CUSTOMER_2, agent, busy, config, flow_for, incoming, to_legs

QUEUE = {"action": "queue", "max_wait_s": 60, "retry_interval_s": 5}
OTHER = "+919811111111"


async def test_queued_caller_is_connected_when_the_busy_agent_frees_up(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await flow_for(h, [1], no_agent=QUEUE)
        h.phone(OTHER, "answer", answer_after_s=1, hangup_after_s=10)
        r = await h.create_call(agent(1), OTHER)
        assert r.status_code == 200
        outbound = r.json()["response"]["call_details"]["sid"]
        await h.advance(2)
        h.phone(agent(1), "answer", answer_after_s=1, hangup_after_s=30)
        sid = await incoming(h)
        await h.advance(5)
        assert (await h.call(sid))["state"] == "active"
        assert (await h.legs(sid))["to"] == []
        assert h.services.extras["inbound"].queued_calls == 1
        await h.advance(5)  # the click-to-call ends at t=12; the queue is woken at once
        assert (await h.call(outbound))["status"] == "completed"
        assert to_legs(await h.legs(sid)) == [(agent(1), "ringing")]
        await h.advance(1)
        assert to_legs(await h.legs(sid)) == [(agent(1), "in-progress")]
        assert await busy(h) == {agent(1): sid}
        await h.advance(40)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 30
        assert h.services.extras["inbound"].queued_calls == 0


async def test_queue_max_wait_passes_then_message_and_to_leg_no_dial(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await flow_for(h, [1], no_agent={**QUEUE, "message_s": 3})
        r = await h.create_call(agent(1), OTHER)
        assert r.status_code == 200
        sid = await incoming(h)
        await h.advance(59)
        assert (await h.call(sid))["state"] == "active"
        await h.advance(1 + 3)
        details = await h.call(sid)
        assert details["status"] == "to_leg_no_dial"
        assert details["total_duration"] == 63
        assert to_legs(await h.legs(sid)) == [(agent(1), "busy")]
        assert h.services.extras["inbound"].queued_calls == 0


async def test_queue_retries_an_agent_who_rejected_and_ends_unanswered_at_max_wait(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await flow_for(h, [1], no_agent={**QUEUE, "max_wait_s": 12, "message_s": 0})
        h.phone(agent(1), "reject", answer_after_s=2)
        sid = await incoming(h)
        await h.advance(30)
        details = await h.call(sid)
        assert details["status"] == "to_leg_unanswered"
        # Offered at t=0 (rejected t=2, the caller queues), again at t=7 (rejected t=9);
        # the wait counts from joining the queue, so it ends at t=2+12.
        assert to_legs(await h.legs(sid)) == [(agent(1), "busy"), (agent(1), "busy")]
        assert details["total_duration"] == 14
        assert await busy(h) == {}


async def test_two_queued_callers_are_served_one_after_the_other(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await flow_for(h, [1], no_agent=QUEUE)
        h.phone(agent(1), "answer", answer_after_s=1, hangup_after_s=10)
        first = await incoming(h, CUSTOMER)
        await h.advance(2)
        second = await incoming(h, CUSTOMER_2)
        await h.advance(2)
        assert to_legs(await h.legs(first)) == [(agent(1), "in-progress")]
        assert (await h.legs(second))["to"] == []
        await h.advance(7)  # first ends at t=11; second is offered at once
        assert (await h.call(first))["status"] == "completed"
        assert to_legs(await h.legs(second)) == [(agent(1), "ringing")]
        await h.advance(20)
        assert (await h.call(second))["status"] == "completed"
        assert await busy(h) == {}


async def test_caller_hanging_up_in_queue_is_from_leg_cancelled(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await flow_for(h, [1], no_agent=QUEUE)
        r = await h.create_call(agent(1), OTHER)
        assert r.status_code == 200
        h.phone(CUSTOMER, "answer", hangup_after_s=20)
        sid = await incoming(h)
        await h.advance(25)
        details = await h.call(sid)
        assert details["status"] == "from_leg_cancelled"
        assert details["total_duration"] == 20
        assert h.services.extras["inbound"].queued_calls == 0
