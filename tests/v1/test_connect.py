"""v1 `Calls/connect` on the real app (sim carrier, ManualClock): both answer formats, both auth
schemes, lower-case paths, the options it maps, and v1-shaped errors for every bad input."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from callbridge.clock import ManualClock
from callbridge.store.calls import get_call_options
from callbridge.store.repo import Store

from ..conftest import basic
from ..harness import ACCOUNT, AGENT, CUSTOMER, EXOPHONE, TOKEN, running_app
from .support import CONNECT, call_sid, connect, details, rest_exception, xml


async def test_connect_json_rings_from_then_to_and_reports_v1_fields(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=7)
        r = await connect(h, CustomField="order-42", TimeLimit="600", TimeOut="20")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        call = r.json()["Call"]
        assert call["Status"] == "queued" and call["Direction"] == "outbound-api"
        assert (call["From"], call["To"], call["PhoneNumberSid"]) == (AGENT, CUSTOMER, EXOPHONE)
        assert call["AccountSid"] == ACCOUNT and call["CustomField"] == "order-42"
        assert call["Uri"] == f"/v1/Accounts/{ACCOUNT}/Calls/{call['Sid']}.json"
        assert len(call["DateCreated"]) == 19  # YYYY-MM-DD HH:mm:ss, no offset
        await h.advance(1.5)
        assert (await details(h, call["Sid"]))["Status"] == "in-progress"
        await h.advance(15)
        done = await details(h, call["Sid"])
        assert done["Status"] == "completed"
        assert done["Duration"] == 10  # 1 s agent ring, 2 s customer ring, 7 s talk
        assert done["Details"]["ConversationDuration"] == 7
        assert (done["Details"]["Leg1Status"], done["Details"]["Leg2Status"]) == (
            "completed",
            "completed",
        )
        assert done["Details"]["Legs"] == [
            {"Leg": {"Id": 1, "OnCallDuration": 9}},
            {"Leg": {"Id": 2, "OnCallDuration": 7}},
        ]
        v3 = await h.call(call["Sid"])  # the same call on the v3 API
        assert v3["status"] == "completed" and v3["custom_field"] == "order-42"
        async with store.read() as conn:
            options = await get_call_options(conn, call["Sid"])
        assert options is not None
        assert (options.max_time_limit_s, options.attempt_timeout_s) == (600, 20)


async def test_connect_without_suffix_answers_xml_and_lower_case_paths_work(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        r = await connect(h, suffix="")
        assert r.status_code == 200
        root = xml(r)
        assert r.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
        sid = root.findtext("Call/Sid")
        assert sid is not None and len(sid) == 32
        assert root.findtext("Call/Direction") == "outbound-api"
        assert root.findtext("Call/ParentCallSid") == ""  # null renders empty
        lower = await h.client.post(
            f"/v1/accounts/{ACCOUNT}/calls/connect.json",
            data={"From": "+919900000002", "To": CUSTOMER, "CallerId": EXOPHONE},
            headers=h.auth,
        )
        assert lower.status_code == 200, lower.text
        got = await h.client.get(f"/v1/accounts/{ACCOUNT}/calls/{sid}", headers=h.auth)
        assert xml(got).findtext("Call/Sid") == sid


async def test_xml_escapes_values_and_never_emits_invalid_characters(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        tricky = '<b>&"quotes"</b>\x01\x1f'
        r = await connect(h, suffix="", CustomField=tricky)
        assert b"<b>" not in r.content
        assert xml(r).findtext("Call/CustomField") == '<b>&"quotes"</b>\ufffd\ufffd'


async def test_account_sid_with_token_authenticates_as_the_exotel_sdk_sends_it(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        r = await connect(h, headers=basic(ACCOUNT, TOKEN))
        assert r.status_code == 200, r.text
        wrong = await connect(h, headers=basic(ACCOUNT, "not-the-token"))
        assert wrong.status_code == 401
        assert rest_exception(wrong) == {
            "Status": 401,
            "Message": "Authentication failed",
            "Code": 1010,
        }
        other = await connect(h, headers=basic("k_other", "t_other"))
        assert other.status_code == 404 and rest_exception(other)["Code"] == 1017


async def test_the_account_sid_scheme_is_served_from_the_credential_cache(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one success, the sid-and-token scheme costs no database read, like key-and-token;
    a wrong token still goes to the database (and the full hash check)."""
    from callbridge.store import accounts as account_store

    reads: list[str] = []
    real = account_store.get_account

    async def counted(conn: Any, sid: str) -> Any:
        reads.append(sid)
        return await real(conn, sid)

    async with running_app(store, clock) as h:
        assert (await connect(h, headers=basic(ACCOUNT, TOKEN))).status_code == 200
        monkeypatch.setattr(account_store, "get_account", counted)
        path = f"/v1/Accounts/{ACCOUNT}/Calls.json"
        for _ in range(3):
            r = await h.client.get(path, headers=basic(ACCOUNT, TOKEN))
            assert r.status_code == 200, r.text
        assert reads == []
        wrong = await h.client.get(path, headers=basic(ACCOUNT, "not-the-token"))
        assert wrong.status_code == 401
        assert reads == [ACCOUNT]
        bare = await h.client.post(CONNECT, data={"From": AGENT})
        assert bare.status_code == 401 and rest_exception(bare)["Status"] == "401"


BAD_INPUT: list[tuple[dict[str, str | None], int, int, str]] = [
    ({"From": None}, 400, 400, "From: Field required"),
    ({"To": None}, 400, 400, "To: Field required (or Url, to connect From to a flow)"),
    ({"To": "not a number"}, 400, 400, "To: "),
    ({"CallerId": "+919111111111"}, 404, 10716, "CallerId: +919111111111 is not an ExoPhone"),
    ({"TimeLimit": "14401"}, 400, 400, "TimeLimit: Input should be less than or equal"),
    ({"TimeLimit": "soon"}, 400, 400, "TimeLimit: Input should be a valid integer"),
    ({"TimeOut": "0"}, 400, 400, "TimeOut: Input should be greater than or equal to 1"),
    ({"Record": "maybe"}, 400, 400, "Record: must be true or false"),
    ({"RecordingChannels": "stereo"}, 400, 1002, "RecordingChannels must be single or dual"),
    ({"RecordingFormat": "wav"}, 400, 400, "RecordingFormat: must be mp3 or mp3-hq"),
    ({"CallType": "promo"}, 400, 400, "CallType: must be trans"),
    ({"CustomField": "x" * 129}, 400, 400, "CustomField: String should have at most 128"),
    ({"CustomField": "a\x00b"}, 400, 400, "CustomField: Value error, NUL characters are not"),
    ({"StatusCallback": "ftp://x/y"}, 400, 400, "StatusCallback: "),
    (
        {"StatusCallback": "http://127.0.0.1/cb", "StatusCallbackEvents[]": "hangup"},
        400,
        400,
        "StatusCallbackEvents: must be terminal or answered",
    ),
    (
        {"StatusCallback": "http://127.0.0.1/cb", "StatusCallbackContentType": "text/xml"},
        400,
        400,
        "StatusCallbackContentType: must be multipart/form-data or application/json",
    ),
    ({"StreamUrl": "http://127.0.0.1/bot"}, 400, 400, "StreamUrl: "),
    ({"StreamUrl": "ws://127.0.0.1/b", "StreamType": "sideways"}, 400, 400, "StreamType: "),
    ({"StreamBegin": "never"}, 400, 400, "StreamBegin: must be Leg1Connect or Leg2Connect"),
    ({"StartPlaybackValueNew": "x", "StartPlaybackToNew": "Caller"}, 400, 400, "StartPlay"),
    ({"Url": "http://example.com/flow"}, 400, 400, "To, Url: give To"),
]
"""(fields changed from a good request, HTTP status, Exotel code, start of the message)"""


async def test_bad_input_answers_a_rest_exception_naming_the_field(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        for fields, status, code, message in BAD_INPUT:
            r = await connect(h, **fields)
            assert r.status_code == status, (fields, r.text)
            error = rest_exception(r)
            assert (error["Status"], error["Code"]) == (status, code), fields
            assert error["Message"].startswith(message), (fields, error)
            as_xml = await connect(h, suffix="", **fields)
            assert as_xml.status_code == status, fields
            assert rest_exception(as_xml)["Code"] == str(code), fields


async def test_a_registered_agent_is_busy_checked_but_any_other_number_is_not(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "manual")
        first = await connect(h)  # AGENT is a user's device: marked busy
        assert first.status_code == 200
        busy = await connect(h, To="+919800000077")
        assert busy.status_code == 409
        assert rest_exception(busy)["Code"] == 10706
        stranger = "+919777000001"  # not a device: v1 keeps no state for it
        h.phone(stranger, "manual")
        assert (await connect(h, From=stranger)).status_code == 200
        assert (await connect(h, From=stranger, To="+919800000078")).status_code == 200


async def test_events_are_read_in_every_form_clients_send_them(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        cb = "http://127.0.0.1:9/cb"
        forms: list[list[tuple[str, str]]] = [
            [("StatusCallbackEvents[]", "terminal"), ("StatusCallbackEvents[]", "answered")],
            [("StatusCallbackEvents[0]", "terminal"), ("StatusCallbackEvents[1]", "answered")],
            [("StatusCallbackEvents", "terminal,answered")],
            [("StatusCallbackEvents", "terminal"), ("StatusCallbackEvents", "answered")],
            [("StatusCallbackEvents[]", "ringing"), ("StatusCallbackEvents[]", "Answered")],
        ]
        expected = [
            ["terminal", "answered"],
            ["terminal", "answered"],
            ["terminal", "answered"],
            ["terminal", "answered"],
            ["answered"],
        ]
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        for index, (pairs, events) in enumerate(zip(forms, expected, strict=True)):
            body = [("From", f"+91977700001{index}"), ("To", CUSTOMER), ("CallerId", EXOPHONE)]
            body += [("StatusCallback", cb), *pairs]
            r = await h.client.post(
                CONNECT + ".json", content=urlencode(body), headers={**h.auth, **form_type}
            )
            sid = call_sid(r)
            async with store.read() as conn:
                options = await get_call_options(conn, sid)
            assert options is not None and options.v1 is not None
            assert [c.event.value for c in options.status_callbacks] == events
            assert {c.content_type.value for c in options.status_callbacks} == {
                "multipart/form-data"
            }


async def test_multipart_requests_are_read_like_url_encoded_ones(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        files = {
            k: (None, v) for k, v in {"From": AGENT, "To": CUSTOMER, "CallerId": EXOPHONE}.items()
        }
        r = await h.client.post(CONNECT + ".json", files=files, headers=h.auth)
        assert r.status_code == 200, r.text
        assert r.json()["Call"]["To"] == CUSTOMER


async def test_a_json_body_is_refused_with_a_message_naming_the_first_missing_field(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        r = await h.client.post(
            CONNECT + ".json", json={"From": AGENT, "To": CUSTOMER}, headers=h.auth
        )
        assert r.status_code == 400
        assert rest_exception(r)["Message"] == "From: Field required"
