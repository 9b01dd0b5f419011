"""Exotel's own Python SDKs from PyPI (`exotel` 0.1.5, `pyexotel` 1.0.3), unchanged, against a
real `callbridge serve` on loopback: connect two numbers, connect to a flow, call details, a
listing, and how each reports a refused call. Plus v1 callbacks end to end from that server.

`exotel` takes a base URL and authenticates with the account sid and token. `pyexotel` always
speaks https to the domain it is given, so it reaches the server through a TLS front whose CA
it trusts by `REQUESTS_CA_BUNDLE` (requests' own setting): the SDK's code is not touched.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import exotel
import httpx
import pyexotel
import pytest
import requests

from ..harness import ACCOUNT, AGENT, AGENT_2, CUSTOMER, DEFAULT_CONFIG, EXOPHONE, KEY, TOKEN
from ..users.servers import Server, basic
from ..webhooks.helpers import Receiver
from .support import form_fields
from .tls import TlsFront

AUTH = basic(KEY, TOKEN)
WAIT_S = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("v1-sdk")
    config = workdir / "callbridge.toml"
    config.write_text(DEFAULT_CONFIG)
    proc = Server("v1sdk", f"sqlite+aiosqlite:///{workdir / 'sdk.db'}", workdir, config=config)
    proc.start()
    try:
        asyncio.run(proc.wait_ready())
        yield proc
    finally:
        proc.kill(15)


@pytest.fixture(scope="module")
def flow_id(server: Server) -> str:
    """A flow that rings AGENT_2 (made once; its calls leave the agent free again)."""
    r = httpx.post(
        f"{server.base_url}/v2/accounts/{ACCOUNT}/flows",
        json={"name": "SDK flow", "connect": {"destinations": [{"contact_uri": AGENT_2}]}},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    found: str = r.json()["response"]["data"]["id"]
    return found


@pytest.fixture(scope="module")
def tls(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFront]:
    front = TlsFront(server.port, tmp_path_factory.mktemp("tls"))
    front.start()
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture
def pyexotel_client(tls: TlsFront, monkeypatch: pytest.MonkeyPatch) -> pyexotel.Exotel:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_path))
    domain = f"127.0.0.1:{tls.port}"
    return pyexotel.Exotel(KEY, TOKEN, ACCOUNT, domain=domain, ccm_domain=domain)


def phones(server: Server, **behaviours: dict[str, Any]) -> None:
    for number, behaviour in behaviours.items():
        r = httpx.put(
            f"{server.base_url}/sim/v1/numbers/{quote(number, safe='')}",
            json=behaviour,
            headers=AUTH,
        )
        assert r.status_code == 200, r.text


QUICK = {"outcome": "answer", "answer_after": 0.2}
TALK_1S = {"outcome": "answer", "answer_after": 0.2, "hangup_after": 1}


def until(read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool]) -> Any:
    """Poll `read` (real time: a real server runs the call) until `done`, at most WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


# -- exotel 0.1.5 ----------------------------------------------------------------------------


def test_exotel_sdk_connects_two_numbers_and_reads_the_call_details(server: Server) -> None:
    phones(server, **{AGENT: QUICK, CUSTOMER: TALK_1S})
    client = exotel.Exotel(ACCOUNT, TOKEN, baseurl=f"{server.base_url}/")
    r = client.call_number(AGENT, EXOPHONE, CUSTOMER, custom_data="sdk-1")
    assert r.status_code == 200, r.text
    sid = r.json()["Call"]["Sid"]
    call = until(lambda: client.call_details(sid).json()["Call"], lambda c: c["EndTime"])
    assert (call["Status"], call["From"], call["To"]) == ("completed", AGENT, CUSTOMER)
    assert call["CustomField"] == "sdk-1" and call["Details"]["ConversationDuration"] == 1
    assert call["Details"]["Leg1Status"] == call["Details"]["Leg2Status"] == "completed"


def test_exotel_sdk_connects_a_number_to_a_flow(server: Server, flow_id: str) -> None:
    phones(server, **{CUSTOMER: TALK_1S, AGENT_2: QUICK})
    client = exotel.Exotel(ACCOUNT, TOKEN, baseurl=f"{server.base_url}/")
    r = client.call_flow(CUSTOMER, EXOPHONE, flow_id)  # Url=http://my.exotel.in/exoml/start/…
    assert r.status_code == 200, r.text
    sid = r.json()["Call"]["Sid"]
    call = until(lambda: client.call_details(sid).json()["Call"], lambda c: c["EndTime"])
    assert call["Status"] == "completed" and call["Details"]["Leg2Status"] == "completed"
    v3 = httpx.get(f"{server.base_url}/v3/accounts/{ACCOUNT}/calls/{sid}", headers=AUTH)
    details = v3.json()["response"]["call_details"]
    assert details["app_id"] == flow_id and details["status"] == "completed"
    legs = httpx.get(f"{server.base_url}/v3/accounts/{ACCOUNT}/calls/{sid}/legs", headers=AUTH)
    assert [leg["contact_uri"] for leg in legs.json()["response"]["leg_details"]["to"]] == [AGENT_2]


def test_exotel_sdk_sees_refusals_as_rest_exceptions(server: Server) -> None:
    client = exotel.Exotel(ACCOUNT, TOKEN, baseurl=f"{server.base_url}/")
    unknown = client.call_number(AGENT, "+919111111111", CUSTOMER)
    assert unknown.status_code == 404
    assert unknown.json()["RestException"]["Code"] == 10716
    phones(server, **{AGENT: QUICK, "+919800000071": {"outcome": "manual"}})
    first = client.call_number(AGENT, EXOPHONE, "+919800000071")
    assert first.status_code == 200
    busy = client.call_number(AGENT, EXOPHONE, CUSTOMER)
    assert busy.status_code == 409
    assert busy.json()["RestException"] == {
        "Status": 409,
        "Message": f"{AGENT} is on another call",
        "Code": 10706,
    }
    held = f"{server.base_url}/sim/v1/numbers/{quote('+919800000071', safe='')}"
    until(lambda: httpx.get(held, headers=AUTH).json(), lambda p: p["state"] == "ringing")
    httpx.post(f"{held}/actions", json={"action": "reject"}, headers=AUTH)
    first_sid = first.json()["Call"]["Sid"]
    ended = until(lambda: client.call_details(first_sid).json()["Call"], lambda c: c["EndTime"])
    assert ended["Status"] == "busy"  # a rejected leg reads as busy; the agent is free again
    wrong = exotel.Exotel(ACCOUNT, "wrong-token", baseurl=f"{server.base_url}/")
    denied = wrong.call_details(first_sid)
    assert denied.status_code == 401 and denied.json()["RestException"]["Code"] == 1010
    sms = client.sms(EXOPHONE, CUSTOMER, "hello")
    assert sms.status_code == 404
    assert "does not provide Exotel's SMS API" in sms.json()["RestException"]["Message"]
    assert client.call_details("f" * 32).status_code == 404


# -- pyexotel 1.0.3 --------------------------------------------------------------------------


def test_pyexotel_calls_reads_details_and_fetches_the_recording_link(
    server: Server, pyexotel_client: pyexotel.Exotel
) -> None:
    phones(server, **{AGENT: QUICK, CUSTOMER: TALK_1S})
    answer = pyexotel_client.call(AGENT, CUSTOMER, EXOPHONE, record=True, time_limit=60)
    assert answer is not None
    sid = answer["Call"]["Sid"]
    call = until(lambda: pyexotel_client.get_call_info(sid)["Call"], lambda c: c["EndTime"])
    assert call["Status"] == "completed" and call["Details"]["ConversationDuration"] == 1
    link = call["RecordingUrl"]
    assert link.startswith(server.base_url) and "signature=" in link
    audio = requests.get(link, timeout=10)  # a CRM or a browser: no credentials
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/mpeg"


def test_pyexotel_connects_a_flow_and_lists_users(
    server: Server, pyexotel_client: pyexotel.Exotel, flow_id: str
) -> None:
    phones(server, **{CUSTOMER: TALK_1S, AGENT_2: QUICK})
    answer = pyexotel_client.connect_flow(CUSTOMER, EXOPHONE, flow_id, time_limit=120)
    assert answer is not None
    sid = answer["Call"]["Sid"]
    call = until(lambda: pyexotel_client.get_call_info(sid)["Call"], lambda c: c["EndTime"])
    assert call["Status"] == "completed"
    users = pyexotel_client.get_all_users()  # the v2 Users listing, over the same front
    assert users is not None
    emails = {item["data"]["email"] for item in users["response"]}
    assert emails == {"asha@example.com", "ravi@example.com"}


def test_pyexotel_reports_a_refused_call_its_own_way(
    server: Server, pyexotel_client: pyexotel.Exotel, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pyexotel_client.call(AGENT, CUSTOMER, "+919111111111") is None
    assert "404 Client Error" in capsys.readouterr().out  # raise_for_status, caught by the SDK
    assert pyexotel_client.get_call_info("f" * 32) is None
    assert "404 Client Error" in capsys.readouterr().out


def test_bulk_call_details_list_what_the_sdks_placed(server: Server) -> None:
    """Neither SDK has a listing of calls: the v1 one, as a CRM's sync reads it, finds the
    calls the SDK placed, newest first."""
    phones(server, **{AGENT: QUICK, CUSTOMER: TALK_1S})
    client = exotel.Exotel(ACCOUNT, TOKEN, baseurl=f"{server.base_url}/")
    sids = []
    for n in range(2):
        r = client.call_number(AGENT, EXOPHONE, CUSTOMER, custom_data=f"list-{n}")
        assert r.status_code == 200, r.text
        sid = r.json()["Call"]["Sid"]
        until(lambda sid=sid: client.call_details(sid).json()["Call"], lambda c: c["EndTime"])
        sids.append(sid)
    r = requests.get(
        f"{server.base_url}/v1/Accounts/{ACCOUNT}/Calls.json",
        params={"Status": "completed", "PageSize": 2},
        auth=(ACCOUNT, TOKEN),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["Metadata"]["PageSize"] == 2
    assert [c["Sid"] for c in page["Calls"]] == sids[::-1]
    assert [c["Status"] for c in page["Calls"]] == ["completed", "completed"]


# -- v1 callbacks, end to end --------------------------------------------------------------


async def test_v1_callbacks_reach_a_real_receiver_as_form_and_as_json(
    server: Server, receiver: Receiver
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH, timeout=10) as client:
        for number, behaviour in {
            AGENT: QUICK,
            CUSTOMER: TALK_1S,
            "+919800000072": {"outcome": "busy"},
        }.items():
            await client.put(f"/sim/v1/numbers/{quote(number, safe='')}", json=behaviour)
        connect = f"/v1/Accounts/{ACCOUNT}/Calls/connect"
        completed = await client.post(
            connect + ".json",
            data={
                "From": AGENT,
                "To": CUSTOMER,
                "CallerId": EXOPHONE,
                "Record": "true",
                "StatusCallback": receiver.url("/form"),
                "StatusCallbackEvents[0]": "terminal",
            },
        )
        assert completed.status_code == 200, completed.text
        await receiver.wait_for(1, timeout_s=WAIT_S)
        busy = await client.post(
            connect,
            data={
                "From": AGENT,
                "To": "+919800000072",
                "CallerId": EXOPHONE,
                "StatusCallback": receiver.url("/json"),
                "StatusCallbackContentType": "application/json",
                "StatusCallbackEvents[]": "terminal",
            },
        )
        assert busy.status_code == 200 and busy.headers["content-type"].startswith(
            "application/xml"
        )
        await receiver.wait_for(2, timeout_s=WAIT_S)
        form, body = receiver.requests
        fields = form_fields(form.headers["content-type"], form.body)
        assert (fields["Status"], fields["EventType"], fields["Legs[1][Status]"]) == (
            "completed",
            "terminal",
            "completed",
        )
        assert fields["CallSid"] == completed.json()["Call"]["Sid"]
        assert "webhook-signature" in form.headers and "x-exotel-event-sid" in form.headers
        recording = await httpx.AsyncClient().get(fields["RecordingUrl"])  # no credentials
        assert recording.status_code == 200
        document = json.loads(body.body)
        assert (document["Status"], document["Leg2Status"]) == ("busy", "busy")
    log = server.log_tail(200_000)
    assert TOKEN not in log and "signature=" not in log
