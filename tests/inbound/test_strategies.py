"""Inbound routing end to end on the simulated carrier: every strategy with agents that answer,
reject, ring out, are OFF/unverified or busy on a click-to-call."""

from __future__ import annotations

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import ACCOUNT, EXOPHONE, running_app
from .helpers import (
    CUSTOMER,
    agent,
    attach,
    busy,
    config,
    flow_for,
    incoming,
    make_flow,
    outbox_events,
    to_legs,
    user_id,
)


async def test_sequential_first_agent_answers_and_call_completes(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        flow = await flow_for(h, [1, 2])
        h.phone(agent(1), "answer", answer_after_s=2, hangup_after_s=30)
        sid = await incoming(h)
        await h.advance(1)
        assert await busy(h) == {agent(1): sid}
        await h.advance(60)
        details = await h.call(sid)
        assert details["direction"] == "inbound"
        assert details["virtual_number"] == EXOPHONE
        assert details["status"] == "completed"
        assert details["state"] == "terminal"
        assert details["app_id"] == flow["id"]
        assert details["app_name"] == "Support"
        assert details["total_talk_time"] == 30
        assert details["total_duration"] == 32
        legs = await h.legs(sid)
        assert [(leg["contact_uri"], leg["status"]) for leg in legs["from"]] == [
            (CUSTOMER, "completed")
        ]
        assert to_legs(legs) == [(agent(1), "completed")]
        assert legs["to"][0]["name"] == "Agent No1"
        assert legs["to"][0]["group_id"] is None
        assert await busy(h) == {}


async def test_sequential_rejected_then_rang_out_then_third_answers(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(3)) as h:
        await flow_for(h, [1, 2, 3], attempt_timeout_s=10)
        h.phone(agent(1), "reject", answer_after_s=2)
        h.phone(agent(2), "no-answer")
        h.phone(agent(3), "answer", answer_after_s=1, hangup_after_s=5)
        sid = await incoming(h)
        await h.advance(2)
        assert to_legs(await h.legs(sid)) == [(agent(1), "busy"), (agent(2), "ringing")]
        assert await busy(h) == {agent(2): sid}
        await h.advance(11)
        assert to_legs(await h.legs(sid)) == [
            (agent(1), "busy"),
            (agent(2), "no-answer"),
            (agent(3), "in-progress"),
        ]
        await h.advance(10)
        assert (await h.call(sid))["status"] == "completed"
        assert await busy(h) == {}


async def test_every_agent_unanswered_plays_message_and_ends_to_leg_unanswered(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await flow_for(h, [1, 2], attempt_timeout_s=5)
        h.phone(agent(1), "no-answer")
        h.phone(agent(2), "busy", answer_after_s=1)
        sid = await incoming(h)
        await h.advance(6)
        details = await h.call(sid)
        assert details["state"] == "active"  # the no-agent message is playing
        await h.advance(5)
        details = await h.call(sid)
        assert details["status"] == "to_leg_unanswered"
        assert details["total_duration"] == 11
        legs = await h.legs(sid)
        assert to_legs(legs) == [(agent(1), "no-answer"), (agent(2), "busy")]
        assert legs["from"][0]["status"] == "completed"
        assert await busy(h) == {}


async def test_agent_on_click_to_call_is_skipped_and_next_agent_gets_the_call(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await flow_for(h, [1, 2])
        h.phone("+919811111111", "answer", answer_after_s=1)
        r = await h.create_call(agent(1), "+919811111111")
        assert r.status_code == 200, r.text
        outbound = r.json()["response"]["call_details"]["sid"]
        await h.advance(3)
        sid = await incoming(h)
        await h.advance(2)
        assert to_legs(await h.legs(sid)) == [(agent(2), "in-progress")]
        assert await busy(h) == {agent(1): outbound, agent(2): sid}


async def test_agent_ringing_for_inbound_cannot_take_a_click_to_call_until_released(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await flow_for(h, [1])
        h.phone(agent(1), "manual")
        sid = await incoming(h)
        await h.advance(1)
        r = await h.create_call(agent(1), "+919811111111")
        assert r.status_code == 409
        assert r.json()["response"]["error_data"]["code"] == 10706
        h.sim.act(agent(1), "reject")
        await h.advance(0)
        assert await busy(h) == {}
        r = await h.create_call(agent(1), "+919811111111")
        assert r.status_code == 200, r.text
        await h.advance(10)
        assert (await h.call(sid))["status"] == "to_leg_unanswered"


async def test_all_agents_busy_ends_to_leg_no_dial_with_skipped_history(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(3, off=(2,), unverified=(3,))) as h:
        await flow_for(h, [1, 2, 3])
        r = await h.create_call(agent(1), "+919811111111")
        assert r.status_code == 200
        sid = await incoming(h)
        await h.advance(5)
        details = await h.call(sid)
        assert details["status"] == "to_leg_no_dial"
        assert to_legs(await h.legs(sid)) == [
            (agent(1), "busy"),
            (agent(2), "failed"),
            (agent(3), "failed"),
        ]
        assert list(await busy(h)) == [agent(1)]


async def test_off_and_unverified_agents_are_skipped(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(3, off=(1,), unverified=(2,))) as h:
        await flow_for(h, [1, 2, 3])
        sid = await incoming(h)
        await h.advance(2)
        assert to_legs(await h.legs(sid)) == [(agent(3), "in-progress")]


async def test_simultaneous_first_answer_wins_and_others_are_canceled(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(3)) as h:
        await flow_for(h, [1, 2, 3], strategy="simultaneous")
        h.phone(agent(1), "answer", answer_after_s=5)
        h.phone(agent(2), "answer", answer_after_s=2, hangup_after_s=10)
        h.phone(agent(3), "no-answer")
        sid = await incoming(h)
        await h.advance(0)
        assert to_legs(await h.legs(sid)) == [
            (agent(1), "ringing"),
            (agent(2), "ringing"),
            (agent(3), "ringing"),
        ]
        assert set(await busy(h)) == {agent(1), agent(2), agent(3)}
        await h.advance(2)
        assert to_legs(await h.legs(sid)) == [
            (agent(1), "canceled"),
            (agent(2), "in-progress"),
            (agent(3), "canceled"),
        ]
        assert await busy(h) == {agent(2): sid}
        assert h.sim.phone_state(agent(1)).value == "idle"
        await h.advance(20)
        assert (await h.call(sid))["status"] == "completed"
        assert await busy(h) == {}


async def test_ring_all_ten_agents_answering_at_once_bridges_exactly_one(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(10)) as h:
        await flow_for(h, list(range(1, 11)), strategy="simultaneous")
        for i in range(1, 11):
            h.phone(agent(i), "answer", answer_after_s=3)
        sid = await incoming(h)
        await h.advance(3)
        legs = await h.legs(sid)
        statuses = [leg["status"] for leg in legs["to"]]
        assert statuses.count("in-progress") == 1
        assert statuses.count("canceled") == 9
        winner = next(leg["contact_uri"] for leg in legs["to"] if leg["status"] == "in-progress")
        assert await busy(h) == {winner: sid}
        in_call = [i for i in range(1, 11) if h.sim.phone_state(agent(i)).value == "in-call"]
        assert [agent(i) for i in in_call] == [winner]
        h.sim.act(CUSTOMER, "hangup")
        await h.advance(0)
        assert (await h.call(sid))["status"] == "completed"
        assert await busy(h) == {}


async def test_simultaneous_nobody_answers_is_to_leg_unanswered(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await flow_for(h, [1, 2], strategy="simultaneous", attempt_timeout_s=8)
        h.phone(agent(1), "no-answer")
        h.phone(agent(2), "reject", answer_after_s=3)
        sid = await incoming(h)
        await h.advance(8 + 5)
        assert (await h.call(sid))["status"] == "to_leg_unanswered"
        assert to_legs(await h.legs(sid)) == [(agent(1), "no-answer"), (agent(2), "busy")]
        assert await busy(h) == {}


async def test_round_robin_rotates_over_agents_across_calls(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(3)) as h:
        await flow_for(h, [1, 2, 3], strategy="round_robin")
        for i in range(1, 4):
            h.phone(agent(i), "answer", answer_after_s=1, hangup_after_s=2)
        served = []
        for _ in range(4):
            sid = await incoming(h)
            await h.advance(5)
            legs = to_legs(await h.legs(sid))
            assert len(legs) == 1 and legs[0][1] == "completed"
            served.append(legs[0][0])
        assert served == [agent(1), agent(2), agent(3), agent(1)]


async def test_round_robin_skips_a_busy_agent_and_continues_after_them(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(3)) as h:
        await flow_for(h, [1, 2, 3], strategy="round_robin")
        h.phone(agent(1), "answer", answer_after_s=1, hangup_after_s=2)
        h.phone(agent(3), "answer", answer_after_s=1, hangup_after_s=2)
        r = await h.create_call(agent(2), "+919811111111")
        assert r.status_code == 200
        first = await incoming(h)
        await h.advance(5)
        second = await incoming(h)
        await h.advance(5)
        assert to_legs(await h.legs(first)) == [(agent(1), "completed")]
        assert to_legs(await h.legs(second)) == [(agent(3), "completed")]


async def test_longest_idle_offers_the_call_to_the_agent_idle_longest(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(3)) as h:
        await flow_for(h, [1, 2, 3], strategy="longest_idle")
        for i in range(1, 4):
            h.phone(agent(i), "answer", answer_after_s=1, hangup_after_s=2)
        served = []
        for _ in range(4):
            sid = await incoming(h)
            await h.advance(5)
            served.append(to_legs(await h.legs(sid))[0][0])
        # Never-called agents first (in flow order), then whoever finished longest ago.
        assert served == [agent(1), agent(2), agent(3), agent(1)]


async def test_longest_idle_with_agent_that_rejects_tries_next_idle_agent(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await flow_for(h, [1, 2], strategy="longest_idle")
        h.phone(agent(1), "reject", answer_after_s=1)
        h.phone(agent(2), "answer", answer_after_s=1, hangup_after_s=2)
        sid = await incoming(h)
        await h.advance(10)
        assert to_legs(await h.legs(sid)) == [(agent(1), "busy"), (agent(2), "completed")]
        assert (await h.call(sid))["status"] == "completed"


async def test_cooldown_skips_an_agent_who_let_the_last_call_ring_out(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await flow_for(h, [1, 2], attempt_timeout_s=5, cooldown_s=60)
        h.phone(agent(1), "no-answer")
        h.phone(agent(2), "answer", answer_after_s=1, hangup_after_s=2)
        first = await incoming(h)
        await h.advance(10)
        assert to_legs(await h.legs(first)) == [(agent(1), "no-answer"), (agent(2), "completed")]
        h.phone(agent(1), "answer", answer_after_s=1, hangup_after_s=2)
        second = await incoming(h)
        await h.advance(5)
        assert to_legs(await h.legs(second)) == [(agent(2), "completed")]
        await h.advance(60)
        third = await incoming(h)
        await h.advance(5)
        assert to_legs(await h.legs(third)) == [(agent(1), "completed")]


async def test_customer_hanging_up_while_agents_ring_is_from_leg_cancelled(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(2)) as h:
        await flow_for(h, [1, 2], strategy="simultaneous")
        h.phone(agent(1), "no-answer")
        h.phone(agent(2), "no-answer")
        h.phone(CUSTOMER, "answer", hangup_after_s=4)
        sid = await incoming(h)
        await h.advance(5)
        details = await h.call(sid)
        assert details["status"] == "from_leg_cancelled"
        assert to_legs(await h.legs(sid)) == [(agent(1), "canceled"), (agent(2), "canceled")]
        assert await busy(h) == {}
        assert h.sim.phone_state(agent(1)).value == "idle"


async def test_agent_hangup_ends_the_call_and_max_conversation_caps_it(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await flow_for(h, [1], max_conversation_s=20)
        h.phone(agent(1), "answer", answer_after_s=1)
        sid = await incoming(h)
        await h.advance(60)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 20
        assert h.sim.phone_state(CUSTOMER).value == "idle"


async def test_groups_expand_in_member_order_and_legs_carry_the_group(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(3)) as h:
        r = await h.client.post(
            f"/v2/accounts/{ACCOUNT}/groups",
            json={"name": "sales", "user_ids": [await user_id(h, 2), await user_id(h, 3)]},
            headers=h.auth,
        )
        assert r.status_code == 200, r.text
        group_id = r.json()["response"]["data"]["id"]
        flow = await make_flow(
            h,
            connect={
                "destinations": [{"group_id": group_id}, {"user_id": await user_id(h, 1)}],
                "attempt_timeout_s": 5,
            },
        )
        await attach(h, flow["id"])
        h.phone(agent(2), "reject", answer_after_s=1)
        h.phone(agent(3), "answer", answer_after_s=1, hangup_after_s=3)
        sid = await incoming(h)
        await h.advance(10)
        legs = (await h.legs(sid))["to"]
        assert [
            (leg["contact_uri"], leg["status"], leg["group_id"], leg["group_name"]) for leg in legs
        ] == [
            (agent(2), "busy", group_id, "sales"),
            (agent(3), "completed", group_id, "sales"),
        ]


async def test_status_callbacks_of_the_flow_are_queued_answered_then_terminal(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        await flow_for(h, [1])
        flow = await make_flow(
            h,
            connect={"destinations": [{"user_id": await user_id(h, 1)}]},
            status_callback=[
                {"event": "answered", "url": "http://127.0.0.1:9/cb"},
                {"event": "terminal", "url": "http://127.0.0.1:9/cb", "method": "get"},
            ],
        )
        await attach(h, flow["id"])
        h.phone(agent(1), "answer", answer_after_s=1, hangup_after_s=3)
        sid = await incoming(h)
        await h.advance(10)
        assert await outbox_events(h, sid) == ["answered", "terminal"]


async def test_exophone_without_flow_ends_to_leg_no_dial(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        sid = await incoming(h)
        await h.advance(10)
        details = await h.call(sid)
        assert details["status"] == "to_leg_no_dial"
        assert details["app_id"] is None
        assert (await h.legs(sid))["to"] == []


async def test_unknown_exophone_is_404_10716(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        r = await h.client.post(
            "/sim/v1/incoming", json={"from": CUSTOMER, "to": "+912200000000"}, headers=h.auth
        )
        assert r.status_code == 404
        assert r.json()["response"]["error_data"]["code"] == 10716
        assert h.sim.active_legs == 0


async def test_sim_incoming_needs_a_caller_number(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock, config=config(1)) as h:
        r = await h.client.post(
            "/sim/v1/incoming", json={"from": "abc", "to": EXOPHONE}, headers=h.auth
        )
        assert r.status_code == 400
        assert r.json()["response"]["error_data"]["message"].startswith("from: ")
        assert h.sim.active_legs == 0
