"""v1 call details and bulk call details (filters, keyset pages, Exotel's paging metadata),
v2_beta ExoPhones, and the answers for v1 paths callbridge does not serve."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from callbridge.clock import ManualClock
from callbridge.store.repo import Store

from ..harness import ACCOUNT, AGENT_2, CUSTOMER, EXOPHONE, Harness, running_app
from .support import CALLS, call_sid, connect, flow_of_agent, rest_exception, xml


async def _page(h: Harness, uri: str) -> dict[str, Any]:
    r = await h.client.get(uri, headers=h.auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _three_calls(h: Harness) -> list[str]:
    """Three finished calls, oldest first: completed, customer busy, agent no-answer."""
    sids = []
    h.phone(CUSTOMER, "answer", hangup_after_s=2)
    sids.append(call_sid(await connect(h)))
    await h.advance(10)
    h.phone("+919800000002", "busy")
    sids.append(call_sid(await connect(h, To="+919800000002")))
    await h.advance(10)
    h.phone(AGENT_2, "no-answer")
    sids.append(call_sid(await connect(h, From=AGENT_2, TimeOut="5")))
    await h.advance(10)
    return sids


async def test_pages_follow_next_and_prev_links_without_gaps(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        oldest, middle, newest = await _three_calls(h)
        first = await _page(h, f"{CALLS}.json?PageSize=2")
        assert [c["Sid"] for c in first["Calls"]] == [newest, middle]
        meta = first["Metadata"]
        assert meta["PageSize"] == 2 and meta["PrevPageUri"] is None
        assert meta["FirstPageUri"] == f"{CALLS}.json?PageSize=2"
        second = await _page(h, meta["NextPageUri"])
        assert [c["Sid"] for c in second["Calls"]] == [oldest]
        assert second["Metadata"]["NextPageUri"] is None
        back = await _page(h, second["Metadata"]["PrevPageUri"])
        assert [c["Sid"] for c in back["Calls"]] == [newest, middle]
        ascending = await _page(h, f"{CALLS}.json?SortBy=DateCreated:asc&PageSize=1")
        assert [c["Sid"] for c in ascending["Calls"]] == [oldest]
        rest = await _page(h, ascending["Metadata"]["NextPageUri"])
        assert [c["Sid"] for c in rest["Calls"]] == [middle]
        assert parse_qs(urlsplit(rest["Metadata"]["NextPageUri"]).query)["SortBy"] == [
            "DateCreated:asc"
        ]


async def test_filters_select_by_status_number_sid_and_creation_time(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        oldest, middle, newest = await _three_calls(h)

        async def sids(query: str) -> list[str]:
            return [c["Sid"] for c in (await _page(h, f"{CALLS}.json?{query}"))["Calls"]]

        assert await sids("Status=completed") == [oldest]
        assert await sids("Status=busy") == [middle]
        assert await sids("Status=no-answer") == [newest]
        assert await sids("Status=busy,no-answer") == [newest, middle]
        assert await sids("Status=in-progress") == []
        assert await sids("From=09900000002") == [newest]  # read in the account's region
        assert await sids("To=%2B919800000002") == [middle]
        assert await sids(f"Sid={oldest},{newest}") == [newest, oldest]
        call = (await _page(h, f"{CALLS}/{middle}.json"))["Call"]
        created = call["DateCreated"]
        assert await sids(f"DateCreated=gte:{created}") == [newest, middle]
        assert await sids(f"DateCreated=lte:{created}") == [middle, oldest]
        assert await sids(f"DateCreated=gte:{created};lte:{created}") == [middle]


async def test_a_sparse_status_filter_still_pages_through_every_match(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone("+919800000009", "busy")
        h.phone(CUSTOMER, "answer", hangup_after_s=2)
        wanted = []
        for i in range(7):
            r = await connect(h, To="+919800000009" if i % 3 == 0 else CUSTOMER)
            if i % 3 == 0:
                wanted.append(call_sid(r))
            await h.advance(10)
        seen: list[str] = []
        uri: str | None = f"{CALLS}.json?Status=busy&PageSize=1"
        while uri is not None:
            page = await _page(h, uri)
            seen += [c["Sid"] for c in page["Calls"]]
            uri = page["Metadata"]["NextPageUri"]
        assert seen == list(reversed(wanted))


async def test_listing_in_xml_and_bad_queries_answer_rest_exceptions(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        await _three_calls(h)
        r = await h.client.get(f"{CALLS}?PageSize=2", headers=h.auth)
        root = xml(r)
        assert root.findtext("Metadata/PageSize") == "2"
        assert len(root.findall("Calls/Call")) == 2
        assert root.findtext("Metadata/PrevPageUri") == ""
        for query, message in [
            ("PageSize=101", "PageSize: Input should be less than or equal to 100"),
            ("PageSize=x", "PageSize: Input should be a valid integer"),
            ("SortBy=Duration:asc", "SortBy: must be DateCreated:asc or DateCreated:desc"),
            ("After=bogus", "After: not a cursor from a page link"),
            ("Before=1_a&After=1_a", "Before and After: give one cursor, not both"),
            ("Status=lost", "Status: must be one of"),
            ("DateCreated=yesterday", "DateCreated: must be gte:"),
            ("DateCreated=gte:2026-02-30 00:00:00", "DateCreated: day is out of range"),
            ("DateCreated=gte:0001-01-01 00:00:00", "DateCreated: out of range"),
            (f"After={'9' * 20}_abc", "After: not a cursor from a page link"),
            ("From=nope", "From: "),
            ("Sid=a;b", "Sid: 'a;b' is not a call sid"),
        ]:
            bad = await h.client.get(f"{CALLS}.json?{query}", headers=h.auth)
            assert bad.status_code == 400, (query, bad.text)
            assert rest_exception(bad)["Message"].startswith(message), (query, bad.text)


async def test_call_details_of_unknown_or_foreign_calls_are_404(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        sid = call_sid(await connect(h))
        missing = await h.client.get(f"{CALLS}/{'f' * 32}.json", headers=h.auth)
        assert missing.status_code == 404
        assert rest_exception(missing)["Code"] == 1021
        from ..conftest import basic

        foreign = await h.client.get(
            f"/v1/Accounts/other/Calls/{sid}.json", headers=basic("k_other", "t_other")
        )
        assert foreign.status_code == 404
        assert rest_exception(foreign)["Code"] == 1021, foreign.text


async def test_unserved_exotel_endpoints_say_so_and_unknown_paths_are_404(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        sms = await h.client.post(
            f"/v1/Accounts/{ACCOUNT}/Sms/send.json",
            data={"From": EXOPHONE, "To": CUSTOMER, "Body": "hi"},
            headers=h.auth,
        )
        assert sms.status_code == 404
        assert rest_exception(sms) == {
            "Status": 404,
            "Message": "callbridge does not provide Exotel's SMS API (Sms/send, Sms/Messages)",
            "Code": 404,
        }
        lookup = await h.client.get(f"/v1/Accounts/{ACCOUNT}/Numbers/{CUSTOMER}", headers=h.auth)
        assert lookup.status_code == 404
        assert "number lookup" in rest_exception(lookup)["Message"]  # XML, no .json
        for path in ["/v1/Nothing", f"/v1/Accounts/{ACCOUNT}/Widgets.json", "/v2_beta/x"]:
            r = await h.client.get(path, headers=h.auth)
            assert r.status_code == 404, path
            assert rest_exception(r)["Status"] in (404, "404"), path
        wrong_method = await h.client.delete(f"{CALLS}/{'a' * 32}.json", headers=h.auth)
        assert wrong_method.status_code == 405
        assert rest_exception(wrong_method)["Code"] == 405
        buy = await h.client.post(
            f"/v2_beta/Accounts/{ACCOUNT}/IncomingPhoneNumbers", data={}, headers=h.auth
        )
        assert buy.status_code == 404
        assert "/v2/accounts/{sid}/exophones" in rest_exception(buy)["Message"]


async def test_exophones_list_as_incoming_phone_numbers_with_their_flow(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        flow = await flow_of_agent(h)
        r = await h.client.put(
            f"/v2/accounts/{ACCOUNT}/exophones/{EXOPHONE}",
            json={"flow_id": flow["id"]},
            headers=h.auth,
        )
        assert r.status_code == 200, r.text
        base = f"/v2_beta/Accounts/{ACCOUNT}/IncomingPhoneNumbers"
        listing = await _page(h, f"{base}.json?PageSize=1")
        [phone] = listing["incoming_phone_numbers"]
        assert listing["page"] == 0 and listing["page_size"] == 1
        assert listing["previous_page_uri"] is None
        assert listing["next_page_uri"] == f"{base}.json?Page=1&PageSize=1"
        second = await _page(h, listing["next_page_uri"])
        assert second["next_page_uri"] is None
        by_number = {p["phone_number"]: p for p in [phone, *second["incoming_phone_numbers"]]}
        assert set(by_number) == {EXOPHONE, "+918047091999"}
        mine = by_number[EXOPHONE]
        assert mine["voice_url"] == (
            f"http://my.exotel.com/{ACCOUNT}/exoml/start_voice/{flow['id']}"
        )
        assert by_number["+918047091999"]["voice_url"] is None
        assert mine["uri"] == f"{base}/{mine['sid']}"
        one = await _page(h, mine["uri"])
        assert one == mine
        assert await _page(h, f"{base}/{EXOPHONE}.json") == mine
        lower = await h.client.get(
            f"/v2_beta/accounts/{ACCOUNT}/incomingphonenumbers", headers=h.auth
        )
        assert lower.status_code == 200
        unknown = await h.client.get(f"{base}/+919111111111", headers=h.auth)
        assert unknown.status_code == 404 and rest_exception(unknown)["Code"] == 10716
        assert (await h.client.get(base)).status_code == 401
