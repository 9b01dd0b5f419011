"""Click-to-call on the simulated carrier with a manual clock: every terminal status, with the
legs, timings and busy marks it leaves behind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import ACCOUNT, AGENT, CUSTOMER, EXOPHONE, Harness, running_app

START = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)
"""Where the ManualClock starts."""


async def start(h: Harness, **fields: Any) -> str:
    r = await h.create_call(**fields)
    assert r.status_code == 200, r.text
    details = r.json()["response"]["call_details"]
    assert details["state"] == "active"
    assert details["status"] is None
    sid: str = details["sid"]
    return sid


async def test_completed_call_has_talk_time_duration_and_completed_legs(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(AGENT, "answer", answer_after_s=1)
        h.phone(CUSTOMER, "answer", answer_after_s=3, hangup_after_s=40)
        sid = await start(h)
        await h.advance(0.5)
        legs = await h.legs(sid)
        assert [leg["status"] for leg in legs["from"]] == ["ringing"]
        assert legs["to"] == []
        await h.advance(2)
        legs = await h.legs(sid)
        assert [leg["status"] for leg in legs["from"]] == ["in-progress"]
        assert [leg["status"] for leg in legs["to"]] == ["ringing"]
        await h.advance(3)
        details = await h.call(sid)
        assert details["state"] == "active"
        assert [leg["status"] for leg in (await h.legs(sid))["to"]] == ["in-progress"]
        await h.advance(60)
        details = await h.call(sid)
        assert details["state"] == "terminal"
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 40
        assert details["total_duration"] == 44
        assert details["start_time"] == "2026-01-15 12:00:00+05:30"
        assert details["end_time"] == "2026-01-15 12:00:44+05:30"
        legs = await h.legs(sid)
        assert [leg["status"] for leg in legs["from"]] == ["completed"]
        assert [leg["status"] for leg in legs["to"]] == ["completed"]
        assert legs["from"][0]["name"] == "Asha Rao"
        assert legs["to"][0]["contact_uri"] == CUSTOMER
        assert legs["to"][0]["group_id"] is None


@pytest.mark.parametrize(
    ("outcome", "leg_status", "status"),
    [
        ("busy", "busy", "from_leg_unanswered"),
        ("reject", "busy", "from_leg_unanswered"),
        ("unreachable", "failed", "from_leg_no_dial"),
        ("switched-off", "failed", "from_leg_no_dial"),
    ],
)
async def test_leg1_failure_ends_call_without_leg2(
    store: Store, clock: ManualClock, outcome: str, leg_status: str, status: str
) -> None:
    async with running_app(store, clock) as h:
        h.phone(AGENT, outcome, answer_after_s=2)
        sid = await start(h)
        await h.advance(10)
        details = await h.call(sid)
        assert (details["state"], details["status"]) == ("terminal", status)
        assert details["total_talk_time"] == 0
        legs = await h.legs(sid)
        assert [leg["status"] for leg in legs["from"]] == [leg_status]
        assert legs["to"] == []


async def test_leg1_rings_out_after_attempt_time_out(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        h.phone(AGENT, "no-answer")
        sid = await start(h, attempt_time_out=45)
        await h.advance(44.9)
        assert (await h.call(sid))["state"] == "active"
        await h.advance(0.2)
        details = await h.call(sid)
        assert details["status"] == "from_leg_unanswered"
        assert details["total_duration"] == 45
        assert [leg["status"] for leg in (await h.legs(sid))["from"]] == ["no-answer"]


@pytest.mark.parametrize(
    ("outcome", "leg_status", "status"),
    [
        ("busy", "busy", "to_leg_unanswered"),
        ("reject", "busy", "to_leg_unanswered"),
        ("no-answer", "no-answer", "to_leg_unanswered"),
        ("unreachable", "failed", "to_leg_no_dial"),
        ("switched-off", "failed", "to_leg_no_dial"),
    ],
)
async def test_leg2_failure_hangs_up_leg1(
    store: Store, clock: ManualClock, outcome: str, leg_status: str, status: str
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, outcome, answer_after_s=2)
        sid = await start(h, attempt_time_out=20)
        await h.advance(40)
        details = await h.call(sid)
        assert (details["state"], details["status"]) == ("terminal", status)
        legs = await h.legs(sid)
        assert [leg["status"] for leg in legs["from"]] == ["completed"]
        assert [leg["status"] for leg in legs["to"]] == [leg_status]
        assert h.sim.phone_state(AGENT).value == "idle"


async def test_agent_hanging_up_while_customer_rings_is_from_leg_cancelled(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "manual")
        sid = await start(h)
        await h.advance(5)
        assert h.sim.phone_state(CUSTOMER).value == "ringing"
        r = await h.client.post(
            f"/sim/v1/numbers/{AGENT}/actions", json={"action": "hangup"}, headers=h.auth
        )
        assert r.status_code == 200, r.text
        await h.advance(0)
        details = await h.call(sid)
        assert details["status"] == "from_leg_cancelled"
        legs = await h.legs(sid)
        assert [leg["status"] for leg in legs["to"]] == ["canceled"]
        assert h.sim.phone_state(CUSTOMER).value == "idle"


async def test_max_time_limit_cuts_the_call_after_leg2_answers(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        sid = await start(h, max_time_limit=30)
        await h.advance(100)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 30
        assert details["total_duration"] == 32


async def test_agent_hangs_up_mid_call_completes_and_frees_customer(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(AGENT, "answer", answer_after_s=1, hangup_after_s=25)
        sid = await start(h)
        await h.advance(60)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 24
        assert h.sim.phone_state(CUSTOMER).value == "idle"


async def test_manual_customer_answers_through_the_sim_api(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.put(
            f"/sim/v1/numbers/{CUSTOMER}", json={"outcome": "manual"}, headers=h.auth
        )
        assert r.json()["outcome"] == "manual"
        sid = await start(h)
        await h.advance(3)
        r = await h.client.get(f"/sim/v1/numbers/{CUSTOMER}", headers=h.auth)
        assert r.json()["state"] == "ringing"
        await h.client.post(
            f"/sim/v1/numbers/{CUSTOMER}/actions", json={"action": "answer"}, headers=h.auth
        )
        await h.advance(0)
        r = await h.client.get(f"/sim/v1/numbers/{CUSTOMER}", headers=h.auth)
        assert r.json()["state"] == "in-call"
        await h.client.post(
            f"/sim/v1/numbers/{CUSTOMER}/actions",
            json={"action": "dtmf", "digits": "42"},
            headers=h.auth,
        )
        await h.advance(10)
        await h.client.post(
            f"/sim/v1/numbers/{CUSTOMER}/actions", json={"action": "hangup"}, headers=h.auth
        )
        await h.advance(0)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["digits"] == "42"
        assert details["total_talk_time"] == 10


async def test_agent_is_busy_during_the_call_and_free_after(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=10)
        first = await start(h)
        second = await h.create_call(to_uri="+919800000099")
        assert second.status_code == 409
        error = second.json()["response"]["error_data"]
        assert error["code"] == 10706
        await h.advance(30)
        assert (await h.call(first))["status"] == "completed"
        third = await h.create_call(to_uri="+919800000099")
        assert third.status_code == 200


async def test_unregistered_number_is_not_state_managed_unless_asked(
    store: Store, clock: ManualClock
) -> None:
    stranger = "+919700000001"
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "manual")
        h.phone("+919800000002", "manual")
        assert (await h.create_call(from_uri=stranger)).status_code == 200
        assert (await h.create_call(from_uri=stranger, to_uri="+919800000002")).status_code == 200
        managed = {"contact_uri": "+919700000002", "state_management": "true"}
        body = {"from": managed, "to": {"contact_uri": CUSTOMER}, "virtual_number": "+912241499102"}
        r1 = await h.client.post("/v3/accounts/acme/calls", json=body, headers=h.auth)
        r2 = await h.client.post("/v3/accounts/acme/calls", json=body, headers=h.auth)
        assert r1.status_code == 200
        assert r2.json()["response"]["error_data"]["code"] == 10706


async def test_shutdown_ends_active_calls_and_frees_agents(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "manual")
        sid = await start(h)
        await h.advance(5)
    async with running_app(store, clock) as h:
        details = await h.call(sid)
        assert details["state"] == "terminal"
        assert details["status"] == "to_leg_no_dial"
        assert (await h.create_call()).status_code == 200


async def test_ended_click_to_call_marks_the_agent_idle_since_then(
    store: Store, clock: ManualClock
) -> None:
    from sqlalchemy import select

    from callbridge.store.tables import devices, users

    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=5)
        await start(h)
        await h.advance(30)
        async with store.read() as conn:
            ended = (
                await conn.execute(
                    select(users.c.last_call_ended_at)
                    .join(devices, devices.c.user_id == users.c.id)
                    .where(devices.c.contact_uri == AGENT)
                )
            ).scalar()
        assert ended is not None
        # Rang 1 s, customer rang 1 s, talked 5 s: the call ended 7 s after it started.
        assert ended.replace(tzinfo=UTC) == START + timedelta(seconds=7)


async def test_sim_behaviour_rejects_booleans_and_control_characters(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.put(
            f"/sim/v1/numbers/{CUSTOMER}", json={"answer_after": True}, headers=h.auth
        )
        assert r.status_code == 400 and "answer_after" in r.text
        r = await h.client.put("/sim/v1/numbers/sip:a%01@x", json={}, headers=h.auth)
        assert r.status_code == 400 and "control characters" in r.text


async def test_a_trailing_slash_names_the_same_resource(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post(
            f"/v3/accounts/{ACCOUNT}/calls/",
            json={
                "from": {"contact_uri": AGENT},
                "to": {"contact_uri": CUSTOMER},
                "virtual_number": EXOPHONE,
            },
            headers=h.auth,
        )
        assert r.status_code == 200, r.text
        sid = r.json()["response"]["call_details"]["sid"]
        r = await h.client.get(f"/v3/accounts/{ACCOUNT}/calls/{sid}/legs/", headers=h.auth)
        assert r.status_code == 200 and r.json()["response"]["leg_details"]["call_sid"] == sid


async def test_digits_are_bounded_so_a_long_keypad_session_still_commits(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        sid = await start(h)
        await h.advance(3)  # both legs answered: the call is bridged
        for _ in range(6):  # 384 keys pressed in all
            r = await h.client.post(
                f"/sim/v1/numbers/{CUSTOMER}/actions",
                json={"action": "dtmf", "digits": "0123456789*#" * 5 + "0123"},
                headers=h.auth,
            )
            assert r.status_code == 200
            await h.advance(0)
        await h.client.post(
            f"/sim/v1/numbers/{CUSTOMER}/actions", json={"action": "hangup"}, headers=h.auth
        )
        await h.advance(0)
        details = await h.call(sid)
        assert details["status"] == "completed"
        assert details["digits"] == (("0123456789*#" * 5 + "0123") * 6)[:256]


async def test_talk_time_is_null_until_the_call_ends(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        sid = await start(h)
        await h.advance(3)  # bridged and talking
        details = await h.call(sid)
        assert (details["state"], details["total_talk_time"]) == ("active", None)
        r = await h.client.get(f"/v3/accounts/{ACCOUNT}/calls//legs", headers=h.auth)
        assert r.status_code == 404
        assert r.json()["response"]["error_data"]["code"] == 10744
