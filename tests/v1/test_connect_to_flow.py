"""v1 `Calls/connect` with `Url=…/exoml/start_voice/{flow_id}`: callbridge dials `From`, then
runs that flow for it (its agents ring as `to` legs); the flow URL forms clients send."""

from __future__ import annotations

import pytest

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import ACCOUNT, AGENT, CUSTOMER, EXOPHONE, running_app
from .support import call_sid, connect, details, flow_of_agent, rest_exception


async def test_from_answers_then_the_flow_connects_it_to_the_flows_agent(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        flow = await flow_of_agent(h)
        h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=6)
        h.phone(AGENT, "answer", answer_after_s=2)
        url = f"http://my.exotel.com/{ACCOUNT}/exoml/start_voice/{flow['id']}"
        r = await connect(h, From=CUSTOMER, To=None, Url=url, CustomField="lead-3")
        sid = call_sid(r)
        assert r.json()["Call"]["To"] == EXOPHONE  # a flow, not a number, is the other party
        await h.advance(2)
        legs = await h.legs(sid)
        assert [(x["contact_uri"], x["status"]) for x in legs["from"]] == [
            (CUSTOMER, "in-progress")
        ]
        assert [(x["contact_uri"], x["status"]) for x in legs["to"]] == [(AGENT, "ringing")]
        busy = await h.create_call(AGENT, "+919800000055")  # the flow holds the agent
        assert busy.json()["response"]["error_data"]["code"] == 10706
        await h.advance(20)
        v3 = await h.call(sid)
        assert (v3["status"], v3["direction"], v3["app_id"]) == (
            "completed",
            "outbound",
            flow["id"],
        )
        assert v3["app_name"] == "Sales line"
        assert v3["total_talk_time"] == 4  # the agent answered at t=3, the customer left at 7
        legs = await h.legs(sid)
        assert [x["status"] for x in legs["from"] + legs["to"]] == ["completed", "completed"]
        v1 = await details(h, sid)
        assert (v1["Status"], v1["Details"]["Leg1Status"], v1["Details"]["Leg2Status"]) == (
            "completed",
            "completed",
            "completed",
        )
        assert v1["CustomField"] == "lead-3"
        free = await h.create_call(AGENT, "+919800000055")  # the agent is free again
        assert free.status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "http://my.exotel.in/exoml/start/{flow}",
        "https://my.exotel.com/{account}/exoml/start/{flow}",
        "http://my.mum1.exotel.com/{account}/exoml/start_voice/{flow}",
        "http://MY.EXOTEL.COM/{account}/exoml/start_voice/{flow}/",
    ],
)
async def test_every_flow_url_form_runs_the_flow(
    store: Store, clock: ManualClock, url: str
) -> None:
    async with running_app(store, clock) as h:
        flow = await flow_of_agent(h)
        r = await connect(
            h, From=CUSTOMER, To=None, Url=url.format(flow=flow["id"], account=ACCOUNT)
        )
        assert (await h.call(call_sid(r)))["app_id"] == flow["id"]


async def test_a_from_that_does_not_answer_ends_the_call_before_the_flow_runs(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        flow = await flow_of_agent(h)
        url = f"http://my.exotel.com/{ACCOUNT}/exoml/start_voice/{flow['id']}"
        h.phone(CUSTOMER, "busy")
        busy_sid = call_sid(await connect(h, From=CUSTOMER, To=None, Url=url))
        h.phone("+919800000002", "unreachable")
        failed_sid = call_sid(await connect(h, From="+919800000002", To=None, Url=url))
        h.phone("+919800000003", "no-answer")
        silent = await connect(h, From="+919800000003", To=None, Url=url, TimeOut="4")
        await h.advance(10)
        for sid, v3_status, v1_status, leg in [
            (busy_sid, "from_leg_unanswered", "busy", "busy"),
            (failed_sid, "from_leg_no_dial", "failed", "failed"),
            (call_sid(silent), "from_leg_unanswered", "no-answer", "no-answer"),
        ]:
            assert (await h.call(sid))["status"] == v3_status
            legs = await h.legs(sid)
            # Nobody from the flow was rung: no `to` leg at all.
            assert [x["status"] for x in legs["from"]] == [leg] and legs["to"] == []
            assert (await details(h, sid))["Status"] == v1_status


async def test_when_no_agent_is_free_the_flow_still_completes_for_v1(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        flow = await flow_of_agent(h)
        h.phone("+919800000055", "manual")
        assert (await h.create_call(AGENT, "+919800000055")).status_code == 200  # agent busy
        h.phone(CUSTOMER, "answer")
        url = f"http://my.exotel.com/{ACCOUNT}/exoml/start_voice/{flow['id']}"
        sid = call_sid(await connect(h, From=CUSTOMER, To=None, Url=url))
        await h.advance(10)  # answered, nobody free, the 2 s no-agent message, hang-up
        assert (await h.call(sid))["status"] == "to_leg_no_dial"
        v1 = await details(h, sid)
        assert v1["Status"] == "completed"  # From reached the flow, as Exotel reports it
        assert v1["Details"]["Leg1Status"] == "completed"


async def test_flow_urls_that_name_nothing_usable_are_refused(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        flow = await flow_of_agent(h)
        for url, status, message in [
            (f"http://my.exotel.com/{ACCOUNT}/exoml/start_voice/{'9' * 32}", 404, "Url: flow "),
            (f"http://my.exotel.com/other/exoml/start_voice/{flow['id']}", 400, "Url: names"),
            ("http://example.com/exoml/start_voice/1", 400, "Url: must be a flow URL"),
        ]:
            r = await connect(h, From=CUSTOMER, To=None, Url=url)
            assert r.status_code == status, r.text
            assert rest_exception(r)["Message"].startswith(message), r.text
        from ..conftest import basic

        foreign = await h.client.post(
            "/v1/Accounts/other/Calls/connect.json",
            data={
                "From": CUSTOMER,
                "CallerId": "+918047091000",
                "Url": f"http://my.exotel.com/other/exoml/start_voice/{flow['id']}",
            },
            headers=basic("k_other", "t_other"),
        )
        assert foreign.status_code == 404  # another account's flow does not exist for it
