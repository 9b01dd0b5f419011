"""The CCM v2 calls endpoint: user/device lookup, the same admission as v3, v2 names."""

from __future__ import annotations

from typing import Any

import httpx

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..conftest import basic
from ..harness import ACCOUNT, AGENT, CUSTOMER, EXOPHONE, Harness, running_app
from .helpers import create_user, data, error_code, user_by_contact

CALLS = f"/v2/accounts/{ACCOUNT}/calls"


async def v2_call(h: Harness, caller: dict[str, Any], **fields: Any) -> httpx.Response:
    body = {
        "from": caller,
        "to": {"customer_contact_uri": CUSTOMER},
        "virtual_number": EXOPHONE,
        **fields,
    }
    r = await h.client.post(CALLS, json=body, headers=h.auth)
    await h.settle()
    return r


async def test_v2_call_by_user_id_runs_on_the_engine(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=3, hangup_after_s=20)
        asha = await user_by_contact(h, AGENT)
        r = await v2_call(h, {"user_id": asha["id"]}, custom_field="lead-7")
        assert r.status_code == 200, r.text
        created = data(r)
        assert created["call_state"] == "active" and created["call_status"] is None
        assert created["direction"] == "outbound"
        assert created["virtual_number"] == EXOPHONE
        assert created["assigned_agent_details"] == {"user_id": asha["id"], "user_name": "Asha Rao"}
        assert created["customer_details"] == {"contact_uri": CUSTOMER, "status": None}
        assert created["custom_field"] == "lead-7"
        sid = created["call_sid"]
        assert (await user_by_contact(h, AGENT))["active_call"] == sid
        await h.advance(30)
        final = data(await h.client.get(f"{CALLS}/{sid}", headers=h.auth))
        assert final["call_state"] == "terminal"
        assert final["call_status"] == "completed"
        assert final["total_talk_time"] == 20
        assert final["customer_details"] == {"contact_uri": CUSTOMER, "status": "completed"}
        assert final["assigned_agent_details"]["user_id"] == asha["id"]
        v3 = await h.call(sid)
        assert (v3["status"], v3["custom_field"]) == ("completed", "lead-7")
        assert (await user_by_contact(h, AGENT))["active_call"] is None


async def test_v2_call_by_contact_uri_and_status_names(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        h.phone(AGENT, "no-answer")
        r = await v2_call(h, {"user_contact_uri": "09900000001"}, attempt_time_out=5)
        sid = data(r)["call_sid"]
        await h.advance(5)
        final = data(await h.client.get(f"{CALLS}/{sid}", headers=h.auth))
        assert final["call_status"] == "agent_unanswered"
        assert final["customer_details"]["status"] is None
        h.phone(AGENT, "answer")
        h.phone(CUSTOMER, "busy")
        sid = data(await v2_call(h, {"user_contact_uri": AGENT}))["call_sid"]
        await h.advance(5)
        final = data(await h.client.get(f"{CALLS}/{sid}", headers=h.auth))
        assert final["call_status"] == "customer_unanswered"
        assert final["customer_details"]["status"] == "busy"


async def test_v2_lookup_errors_in_order(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        r = await v2_call(h, {"user_id": "0" * 32})
        assert (r.status_code, error_code(r)) == (404, 10731)
        r = await v2_call(h, {"user_contact_uri": "+919911111111"})
        assert (r.status_code, error_code(r)) == (404, 10731)
        bare = data(await create_user(h))
        r = await v2_call(h, {"user_id": bare["id"]})
        assert (r.status_code, error_code(r)) == (404, 10806)
        asha = await user_by_contact(h, AGENT)
        r = await v2_call(h, {"user_id": asha["id"], "device_id": "1" * 32})
        assert (r.status_code, error_code(r)) == (404, 10702)
        # A new user's device is ON but unverified.
        fresh = data(await create_user(h, first_name="Fresh", device_contact_uri="+919900000088"))
        r = await v2_call(h, {"user_id": fresh["id"]})
        assert (r.status_code, error_code(r)) == (409, 10705)
        assert h.services.engine.active_calls == 0


async def test_v2_request_validation(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        asha = await user_by_contact(h, AGENT)
        caller = {"user_id": asha["id"]}
        r = await v2_call(h, {})
        assert r.status_code == 400 and "user_id or user_contact_uri" in r.text
        r = await v2_call(h, caller, recording=True, recording_channels="quad")
        assert (r.status_code, error_code(r)) == (400, 1002)
        r = await v2_call(h, caller, virtual_number="+918000000000")
        assert (r.status_code, error_code(r)) == (404, 10716)
        r = await v2_call(h, caller, max_time_limit=0)
        assert r.status_code == 400 and "max_time_limit" in r.text
        r = await h.client.post(
            CALLS, json={"from": caller, "virtual_number": EXOPHONE}, headers=h.auth
        )
        assert r.status_code == 400 and "to" in r.json()["response"]["error_data"]["message"]
        r = await v2_call(h, caller, status_callback="ftp://example.com/cb")
        assert r.status_code == 400 and "status_callback" in r.text
        assert h.services.engine.active_calls == 0


async def test_v2_options_reach_the_engine(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=1)
        asha = await user_by_contact(h, AGENT)
        r = await v2_call(
            h,
            {"user_id": asha["id"]},
            max_time_limit=15,
            status_callback="http://127.0.0.1:9/cb",
        )
        sid = data(r)["call_sid"]
        await h.advance(30)
        final = data(await h.client.get(f"{CALLS}/{sid}", headers=h.auth))
        assert (final["call_status"], final["total_talk_time"]) == ("completed", 15)


async def test_v2_calls_are_isolated_per_account(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        asha = await user_by_contact(h, AGENT)
        sid = data(await v2_call(h, {"user_id": asha["id"]}))["call_sid"]
        other = basic("k_other", "t_other")
        r = await h.client.get(f"/v2/accounts/other/calls/{sid}", headers=other)
        assert (r.status_code, error_code(r)) == (404, 1021)
        r = await h.client.post(
            "/v2/accounts/other/calls",
            json={
                "from": {"user_id": asha["id"]},
                "to": {"customer_contact_uri": CUSTOMER},
                "virtual_number": "+918047091000",
            },
            headers=other,
        )
        assert (r.status_code, error_code(r)) == (404, 10731)
