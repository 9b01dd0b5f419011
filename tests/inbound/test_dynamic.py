"""Dynamic routing (Exotel CCM programmable connect) against a real HTTP server on 127.0.0.1:
both answer shapes, options from the answer, refetch after attempts, and the fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import EXOPHONE, running_app
from .helpers import (
    CUSTOMER,
    RouteServer,
    agent,
    attach,
    busy,
    config,
    incoming,
    make_flow,
    to_legs,
    user_id,
)

OUTSIDER = "+919822222222"


@pytest.fixture
async def server() -> AsyncIterator[RouteServer]:
    s = RouteServer()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def dynamic_flow(h: Any, url: str, **connect: Any) -> dict[str, Any]:
    no_agent = connect.pop("no_agent", {"action": "message", "message_s": 2})
    flow = await make_flow(
        h, name="CRM routing", connect={"url": url, **connect}, no_agent=no_agent
    )
    await attach(h, flow["id"])
    return flow


async def test_numbers_answer_routes_to_the_number_and_sends_exotel_parameters(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        flow = await dynamic_flow(h, server.url() + "?team=a")
        server.answer(
            {
                "fetch_after_attempt": False,
                "destination": {"numbers": [agent(2), "sip:agent@pbx.example.com"]},
                "max_ringing_duration": 4,
                "max_conversation_duration": 15,
                "record": False,
            }
        )
        h.phone(agent(2), "answer", answer_after_s=2)
        sid = await incoming(h)
        await h.advance(60)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 15
        assert to_legs(await h.legs(sid)) == [(agent(2), "completed")]
        assert len(server.requests) == 1
        request = server.requests[0]
        assert request.headers["exotel-version"] == "1.1"
        query = request.query
        assert query["team"] == "a"
        assert query["CallSid"] == sid
        assert query["CallFrom"] == CUSTOMER
        assert query["CallTo"] == EXOPHONE
        assert query["Direction"] == "incoming"
        assert query["flow_id"] == flow["id"]
        assert query["Created"] == "2026-01-15 12:00:00"
        assert query["CurrentTime"] == "2026-01-15 12:00:00"


async def test_contact_uri_list_answer_rings_bare_numbers_with_state_management(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await dynamic_flow(h, server.url())
        server.answer([{"contact_uri": OUTSIDER, "state_management": True}])
        h.phone(OUTSIDER, "manual")
        sid = await incoming(h)
        await h.advance(1)
        assert to_legs(await h.legs(sid)) == [(OUTSIDER, "ringing")]
        assert await busy(h) == {OUTSIDER: sid}
        h.sim.act(OUTSIDER, "answer")
        await h.advance(1)
        h.sim.act(OUTSIDER, "hangup")
        await h.advance(1)
        assert (await h.call(sid))["status"] == "completed"
        assert await busy(h) == {}


async def test_destination_list_of_contact_uris_skips_a_busy_user_device(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await dynamic_flow(h, server.url(), strategy="sequential")
        server.answer({"destination": [{"contact_uri": agent(1)}, {"contact_uri": agent(2)}]})
        r = await h.create_call(agent(1), "+919811111111")
        assert r.status_code == 200
        h.phone(agent(2), "answer", answer_after_s=1, hangup_after_s=3)
        sid = await incoming(h)
        await h.advance(10)
        assert to_legs(await h.legs(sid)) == [(agent(2), "completed")]


async def test_timeout_falls_back_to_the_static_list(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await dynamic_flow(
            h,
            server.url(),
            url_timeout_s=0.2,
            destinations=[{"user_id": await user_id(h, 1)}],
        )
        server.answer({"destination": {"numbers": [agent(2)]}}, delay_s=2.0)
        h.phone(agent(1), "answer", answer_after_s=1, hangup_after_s=3)
        sid = await incoming(h)
        await h.advance(10)
        assert to_legs(await h.legs(sid)) == [(agent(1), "completed")]
        assert (await h.call(sid))["status"] == "completed"


async def test_error_answer_with_no_agent_fallback_ends_to_leg_no_dial(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await dynamic_flow(
            h,
            server.url(),
            fallback="no_agent",
            destinations=[{"user_id": await user_id(h, 1)}],
        )
        server.answer({"error": "down"}, status=500)
        sid = await incoming(h)
        await h.advance(10)
        assert (await h.call(sid))["status"] == "to_leg_no_dial"
        assert (await h.legs(sid))["to"] == []


async def test_oversized_or_invalid_answer_uses_the_fallback(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await dynamic_flow(h, server.url(), destinations=[{"user_id": await user_id(h, 1)}])
        h.phone(agent(1), "answer", answer_after_s=1, hangup_after_s=2)
        server.answer(b"[" + b'"+919800000009",' * 10000 + b'"x"]')
        server.answer(b"not json")
        first = await incoming(h)
        await h.advance(5)
        second = await incoming(h)
        await h.advance(5)
        assert to_legs(await h.legs(first)) == [(agent(1), "completed")]
        assert to_legs(await h.legs(second)) == [(agent(1), "completed")]


async def test_empty_destination_dials_nobody(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await dynamic_flow(h, server.url(), destinations=[{"user_id": await user_id(h, 1)}])
        server.answer({"destination": {"numbers": []}})
        sid = await incoming(h)
        await h.advance(10)
        assert (await h.call(sid))["status"] == "to_leg_no_dial"
        assert (await h.legs(sid))["to"] == []


async def test_fetch_after_attempt_asks_again_after_each_failed_attempt(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await dynamic_flow(h, server.url())
        server.answer({"fetch_after_attempt": True, "destination": {"numbers": [agent(1)]}})
        server.answer({"fetch_after_attempt": True, "destination": {"numbers": [agent(2)]}})
        h.phone(agent(1), "reject", answer_after_s=1)
        h.phone(agent(2), "answer", answer_after_s=1, hangup_after_s=3)
        sid = await incoming(h)
        await h.advance(10)
        assert to_legs(await h.legs(sid)) == [(agent(1), "busy"), (agent(2), "completed")]
        assert len(server.requests) == 2
        assert server.requests[1].query["DialWhomNumber"] == agent(1)


async def test_parallel_ringing_answer_rings_all_numbers_at_once(
    store: Store, clock: ManualClock, server: RouteServer
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await dynamic_flow(h, server.url())
        server.answer(
            {
                "destination": {"numbers": [agent(1), agent(2)]},
                "parallel_ringing": {"activate": True, "max_parallel_attempts": 2},
            }
        )
        h.phone(agent(1), "answer", answer_after_s=3)
        h.phone(agent(2), "answer", answer_after_s=1, hangup_after_s=2)
        sid = await incoming(h)
        await h.advance(10)
        assert to_legs(await h.legs(sid)) == [(agent(1), "canceled"), (agent(2), "completed")]
