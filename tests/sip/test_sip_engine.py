"""Every click-to-call operation of the engine, through the API, on the SIP driver with SIPp as
the agent (one UAS) and the customer (another): bridged audio with a distinct tone per party,
each unanswered outcome, CANCEL on ring timeout, far-end BYE, max_time_limit, DTMF, single and
dual recordings, wait audio, playback at connect, a customer number sent to the trunk, and
busy marks released after every outcome. Real time throughout: calls ring and talk for a second
or two and every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy import func, select

from callbridge.domain.calls import CallState, CallStatus
from callbridge.media.audio import dominant_frequency
from callbridge.store import calls as call_store
from callbridge.store.repo import Store
from callbridge.store.tables import calls
from tests.media.support import decode_mp3, http_server, power_at
from tests.sip.conftest import Frames, sip_settings, until
from tests.sip.sipp import Sipp
from tests.sip.support import (
    ACCOUNT,
    AGENT_HZ,
    AUDIO_HZ,
    AUTH,
    CUSTOMER_HZ,
    EXOPHONE,
    SipApp,
    channel_tones,
    near,
    sip_app,
    wav_bytes,
)

pytestmark = pytest.mark.sip

PSTN_CUSTOMER = "+919800000001"

AppFactory = Callable[..., AbstractAsyncContextManager[SipApp]]


@pytest.fixture
def audio_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 hosting the wait-audio and playback WAVs."""
    body = wav_bytes(AUDIO_HZ, 1.0)
    with http_server({"/tone.wav": (200, body)}) as base:
        yield f"{base}/tone.wav"


@pytest.fixture
def make_app(store: Store) -> AppFactory:
    def factory(
        workers: int = 1, worker_python: str | None = None, **overrides: Any
    ) -> AbstractAsyncContextManager[SipApp]:
        settings = sip_settings(workers=workers, allow_private_urls=True, **overrides)
        return sip_app(store, settings, worker_python=worker_python)

    return factory


@pytest.fixture
async def app(make_app: AppFactory) -> AsyncIterator[SipApp]:
    async with make_app() as running:
        yield running


def uri(party: Sipp, user: str) -> str:
    return f"sip:{user}@{party.uri_host}"


async def wait_sipp(*parties: Sipp, timeout_s: float = 10.0) -> list[int]:
    return [await asyncio.to_thread(p.wait, timeout_s) for p in parties]


async def ended(app: SipApp, sid: str) -> dict[str, Any]:
    """The terminal call_details, after checking the call left no busy mark behind."""
    details = await app.wait_terminal(sid)
    assert await app.busy_uris() == []
    return details


# --- answered calls --------------------------------------------------------------------------


async def test_customer_bye_ends_bridged_call_completed_with_its_talk_time(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=200)
    customer = sipp("uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=2000)
    sid = await app.create_call(uri(agent, "agent"), uri(customer, "customer"))
    await app.wait_leg(sid, "to", "in-progress")
    assert await app.busy_uris() == [f"sip:agent@{agent.uri_host}"]
    second = await app.client.post(
        f"/v3/accounts/{ACCOUNT}/calls",
        headers=AUTH,
        json={
            "from": {"contact_uri": uri(agent, "agent"), "state_management": True},
            "to": {"contact_uri": uri(customer, "other")},
            "virtual_number": EXOPHONE,
        },
    )
    assert second.json()["response"]["error_data"]["code"] == 10706

    details = await ended(app, sid)
    assert details["status"] == "completed"
    assert details["total_talk_time"] == 2
    assert 2 <= details["total_duration"] <= 4
    assert details["digits"] is None and details["recordings"] is None
    assert await app.leg_statuses(sid) == (["completed"], ["completed"])
    assert await wait_sipp(agent, customer) == [0, 0]  # the agent got our BYE


async def test_agent_bye_mid_call_ends_call_completed_and_hangs_up_the_customer(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_answer_tone_then_bye.xml", tone_hz=AGENT_HZ, pause_ms=2300)
    customer = sipp("uas_answer_tone.xml", tone_hz=CUSTOMER_HZ, pause_ms=200)
    sid = await app.create_call(uri(agent, "agent"), uri(customer, "customer"))
    details = await ended(app, sid)
    assert details["status"] == "completed"
    assert details["total_talk_time"] == 2
    assert await app.leg_statuses(sid) == (["completed"], ["completed"])
    assert await wait_sipp(agent, customer) == [0, 0]


async def test_max_time_limit_cuts_the_call_off_completed(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100)
    customer = sipp("uas_answer_tone.xml", tone_hz=CUSTOMER_HZ, pause_ms=100)
    sid = await app.create_call(uri(agent, "agent"), uri(customer, "customer"), max_time_limit=2)
    details = await ended(app, sid)
    assert details["status"] == "completed"
    assert details["total_talk_time"] == 2
    assert await app.leg_statuses(sid) == (["completed"], ["completed"])
    assert await wait_sipp(agent, customer) == [0, 0]  # both got BYE


async def test_agent_hanging_up_while_customer_rings_is_from_leg_cancelled(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_answer_then_bye.xml", pause_ms=800, rtp_echo=True)
    customer = sipp("uas_ring_until_cancel.xml")
    sid = await app.create_call(uri(agent, "agent"), uri(customer, "customer"), attempt_time_out=10)
    details = await ended(app, sid)
    assert details["status"] == "from_leg_cancelled"
    assert details["total_talk_time"] == 0
    assert await app.leg_statuses(sid) == (["completed"], ["canceled"])
    assert await wait_sipp(agent, customer) == [0, 0]  # the customer got CANCEL


async def test_rfc2833_digits_end_up_in_call_details(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_answer_dtmf.xml")
    customer = sipp("uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=1500)
    sid = await app.create_call(uri(agent, "agent"), uri(customer, "customer"))
    details = await ended(app, sid)
    assert details["status"] == "completed"
    assert details["digits"] == "1"
    assert await wait_sipp(agent, customer) == [0, 0]


async def test_customer_number_is_sent_to_the_trunk_with_the_exophone_as_caller_id(
    make_app: AppFactory, sipp: Callable[..., Sipp]
) -> None:
    trunk = sipp(
        "uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=1200, extra=["-trace_msg"]
    )
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100)
    async with make_app(sip_trunk_host="127.0.0.1", sip_trunk_port=trunk.port) as app:
        sid = await app.create_call(uri(agent, "agent"), "09800000001")
        details = await ended(app, sid)
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 1
        legs = await app.legs(sid)
        assert legs["to"][0]["contact_uri"] == PSTN_CUSTOMER
        assert legs["to"][0]["status"] == "completed"
    assert await wait_sipp(agent, trunk) == [0, 0]
    messages = "".join(p.read_text() for p in trunk.workdir.glob("*_messages.log"))
    assert f"INVITE sip:{PSTN_CUSTOMER}@127.0.0.1:{trunk.port} SIP/2.0" in messages
    from_header = next(line for line in messages.splitlines() if line.startswith("From:"))
    assert f"sip:{EXOPHONE}@127.0.0.1" in from_header


# --- unanswered legs -------------------------------------------------------------------------

UNANSWERED = [
    pytest.param("uas_486.xml", "busy", "unanswered", id="486-busy"),
    pytest.param("uas_603.xml", "busy", "unanswered", id="603-rejected"),
    pytest.param("uas_500.xml", "failed", "no_dial", id="500-failed"),
    pytest.param("uas_ring_until_cancel.xml", "no-answer", "unanswered", id="ring-timeout"),
]


@pytest.mark.parametrize(("scenario", "leg_status", "outcome"), UNANSWERED)
async def test_agent_leg_not_answered_ends_call_without_dialling_the_customer(
    app: SipApp, sipp: Callable[..., Sipp], scenario: str, leg_status: str, outcome: str
) -> None:
    agent = sipp(scenario)
    sid = await app.create_call(uri(agent, "agent"), "sip:customer@127.0.0.1:9", attempt_time_out=1)
    details = await ended(app, sid)
    assert details["status"] == f"from_leg_{outcome}"
    assert details["total_talk_time"] == 0
    assert await app.leg_statuses(sid) == ([leg_status], [])
    assert await wait_sipp(agent) == [0]  # 486/603/500 ACKed; a ringing agent got CANCEL


@pytest.mark.parametrize(("scenario", "leg_status", "outcome"), UNANSWERED)
async def test_customer_leg_not_answered_hangs_up_the_agent(
    app: SipApp, sipp: Callable[..., Sipp], scenario: str, leg_status: str, outcome: str
) -> None:
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100)
    customer = sipp(scenario)
    sid = await app.create_call(uri(agent, "agent"), uri(customer, "customer"), attempt_time_out=1)
    details = await ended(app, sid)
    assert details["status"] == f"to_leg_{outcome}"
    assert details["total_talk_time"] == 0
    assert await app.leg_statuses(sid) == (["completed"], [leg_status])
    assert await wait_sipp(agent, customer) == [0, 0]


# --- media -----------------------------------------------------------------------------------


async def test_dual_recording_has_the_agent_left_and_the_customer_right(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100)
    customer = sipp("uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=2500)
    sid = await app.create_call(
        uri(agent, "agent"),
        uri(customer, "customer"),
        recording={"record": True, "channels": "dual"},
    )
    details = await ended(app, sid)
    assert details["status"] == "completed"
    assert details["total_talk_time"] in (2, 3)
    channels, duration_s, (left, right) = channel_tones(await app.recording(details))
    assert channels == 2
    assert abs(duration_s - 2.5) <= 0.4
    assert near(left, AGENT_HZ) and near(right, CUSTOMER_HZ), (left, right)


async def test_single_recording_mixes_both_parties(app: SipApp, sipp: Callable[..., Sipp]) -> None:
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100)
    customer = sipp("uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=2000)
    sid = await app.create_call(
        uri(agent, "agent"), uri(customer, "customer"), recording={"record": True}
    )
    details = await ended(app, sid)
    channels, _, duration_s, (mono,) = decode_mp3(await app.recording(details))
    assert channels == 1
    assert abs(duration_s - 2.0) <= 0.4
    agent_power, customer_power = power_at(mono, AGENT_HZ), power_at(mono, CUSTOMER_HZ)
    assert agent_power > 0.2 * customer_power and customer_power > 0.2 * agent_power
    assert min(agent_power, customer_power) > 20 * power_at(mono, AUDIO_HZ)


async def test_wait_audio_is_heard_by_the_agent_while_the_customer_rings_then_stops(
    app: SipApp, sipp: Callable[..., Sipp], audio_server: str
) -> None:
    """The agent echoes what it hears, so tapping its leg tells us what it was played."""
    agent = sipp("uas_answer_echo.xml", pause_ms=100, rtp_echo=True)
    customer = sipp("uas_answer_tone.xml", tone_hz=CUSTOMER_HZ, pause_ms=1500)
    sid = await app.create_call(
        uri(agent, "agent"),
        uri(customer, "customer"),
        wait_audio_url=audio_server,
        max_time_limit=1,
    )
    await app.wait_leg(sid, "to", "ringing")
    agent_leg = (await app.legs(sid))["from"][0]["sid"]
    heard = Frames()
    tap = await app.driver.tap([agent_leg], heard)
    try:
        await asyncio.sleep(0.7)
        assert near(dominant_frequency(heard.last(agent_leg, 0.4)), AUDIO_HZ)
        await app.wait_leg(sid, "to", "in-progress")
        heard.clear()
        await asyncio.sleep(0.6)
        assert near(dominant_frequency(heard.last(agent_leg, 0.3)), CUSTOMER_HZ)
    finally:
        tap.stop()
    details = await ended(app, sid)
    assert details["status"] == "completed"
    assert await wait_sipp(agent, customer) == [0, 0]


@pytest.mark.parametrize("to", ["caller", "callee"])
async def test_playback_at_connect_is_played_to_the_chosen_party(
    app: SipApp, sipp: Callable[..., Sipp], audio_server: str, to: str
) -> None:
    """The party the playback goes to echoes it back; the other side is silent. The dual
    recording shows the played tone in that party's channel only."""
    echo = sipp("uas_answer_then_bye.xml", pause_ms=2300, rtp_echo=True)
    silent = sipp("uas_answer_echo.xml", pause_ms=100)
    agent, customer = (echo, silent) if to == "caller" else (silent, echo)
    sid = await app.create_call(
        uri(agent, "agent"),
        uri(customer, "customer"),
        playback=[{"event": "start", "to": to, "value": audio_server}],
        recording={"record": True, "channels": "dual"},
    )
    details = await ended(app, sid)
    assert details["status"] == "completed"
    _, _, _, (left, right) = decode_mp3(await app.recording(details))
    played, other = (left, right) if to == "caller" else (right, left)
    window = slice(int(0.2 * 8000) * 2, int(0.9 * 8000) * 2)
    assert near(dominant_frequency(played[window]), AUDIO_HZ)
    assert power_at(played[window], AUDIO_HZ) > 20 * power_at(other[window], AUDIO_HZ)


# --- inbound ---------------------------------------------------------------------------------


async def test_inbound_call_to_an_exophone_rings_a_sip_agent_and_is_recorded(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    """SIPp calls the ExoPhone on the worker's SIP port; the flow rings the agent (another
    SIPp), bridges them, records both sides, and the customer's BYE ends the call."""
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=300)
    r = await app.client.post(
        f"/v2/accounts/{ACCOUNT}/flows",
        headers=AUTH,
        json={
            "name": "Support",
            "connect": {
                "destinations": [{"contact_uri": uri(agent, "agent")}],
                "attempt_timeout_s": 5,
                "recording": {"record": True, "channels": "dual"},
            },
        },
    )
    assert r.status_code == 200, r.text
    flow_id = r.json()["response"]["data"]["id"]
    r = await app.client.put(
        f"/v2/accounts/{ACCOUNT}/exophones/{EXOPHONE}", headers=AUTH, json={"flow_id": flow_id}
    )
    assert r.status_code == 200, r.text
    calls: list[str] = []
    app.services.engine.add_listener(
        lambda call: calls.append(call.sid) if call.sid not in calls else None
    )
    customer = sipp(
        "uac_call.xml",
        remote=f"127.0.0.1:{app.driver.worker_ports()[0]}",
        tone_hz=CUSTOMER_HZ,
        pause_ms=3000,
        keys={"caller": "919900000001"},
        extra=["-s", EXOPHONE.removeprefix("+")],
    )
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.05)
    [sid] = calls
    await app.wait_leg(sid, "to", "in-progress")
    details = await ended(app, sid)
    assert (details["direction"], details["status"]) == ("inbound", "completed")
    assert details["app_id"] == flow_id
    assert 2 <= details["total_talk_time"] <= 3
    legs = await app.legs(sid)
    assert [(x["contact_uri"], x["status"]) for x in legs["from"]] == [
        ("+919900000001", "completed")
    ]
    assert [(x["contact_uri"], x["status"]) for x in legs["to"]] == [
        (uri(agent, "agent"), "completed")
    ]
    channels, _, (left, right) = channel_tones(await app.recording(details))
    assert channels == 2
    assert near(left, AGENT_HZ) and near(right, CUSTOMER_HZ), (left, right)
    assert await wait_sipp(customer, agent) == [0, 0]


async def test_inbound_caller_hanging_up_while_the_agent_rings_cancels_the_agent(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_ring_until_cancel.xml")
    flow = await app.client.post(
        f"/v2/accounts/{ACCOUNT}/flows",
        headers=AUTH,
        json={
            "name": "Support",
            "connect": {"destinations": [{"contact_uri": uri(agent, "agent")}]},
        },
    )
    flow_id = flow.json()["response"]["data"]["id"]
    await app.client.put(
        f"/v2/accounts/{ACCOUNT}/exophones/{EXOPHONE}", headers=AUTH, json={"flow_id": flow_id}
    )
    calls: list[str] = []
    app.services.engine.add_listener(
        lambda call: calls.append(call.sid) if call.sid not in calls else None
    )
    customer = sipp(
        "uac_call.xml",
        remote=f"127.0.0.1:{app.driver.worker_ports()[0]}",
        tone_hz=CUSTOMER_HZ,
        pause_ms=1200,
        keys={"caller": "919900000001"},
        extra=["-s", EXOPHONE.removeprefix("+")],
    )
    await until(lambda: bool(calls), timeout_s=5)
    details = await ended(app, calls[0])
    assert details["status"] == "from_leg_cancelled"
    assert await app.leg_statuses(calls[0]) == (["completed"], ["canceled"])
    assert await wait_sipp(customer, agent) == [0, 0]  # the agent got CANCEL


# --- capacity and failures -------------------------------------------------------------------


async def test_a_click_to_call_beyond_the_pool_capacity_is_refused_503_leaving_nothing_behind(
    make_app: AppFactory, store: Store, sipp: Callable[..., Sipp], engine: dict[str, Any]
) -> None:
    """One worker of 4 calls (the wheel, or our build capped to it) holds 2 click-to-calls: a
    third is answered 503 at once, with no call row and no busy mark; when a call ends, the
    next one is admitted."""
    agents = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100, calls=3)
    customers = sipp("uas_ring_until_cancel.xml", calls=3)
    async with make_app(**engine) as app:
        first = [
            await app.create_call(uri(agents, f"agent{n}"), uri(customers, "c"), attempt_time_out=2)
            for n in range(2)
        ]
        for sid in first:
            await app.wait_leg(sid, "to", "ringing")
        rows = await count_calls(store)
        refused = await app.client.post(
            f"/v3/accounts/{ACCOUNT}/calls",
            headers=AUTH,
            json={
                "from": {"contact_uri": uri(agents, "agent2"), "state_management": True},
                "to": {"contact_uri": uri(customers, "c")},
                "virtual_number": EXOPHONE,
            },
        )
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        body = refused.json()
        assert (body["http_code"], body["response"]["status"]) == (503, "failure")
        error = body["response"]["error_data"]
        assert (error["code"], error["description"]) == (503, "SIP capacity exhausted")
        assert error["message"] == (
            "SIP capacity exhausted: 1 of 1 media workers running, all full (4 calls); retry later"
        )
        assert "call_details" not in body["response"]
        assert await count_calls(store) == rows
        assert sorted(await app.busy_uris()) == sorted(uri(agents, f"agent{n}") for n in (0, 1))
        statuses = [(await app.wait_terminal(sid))["status"] for sid in first]
        assert statuses == ["to_leg_unanswered", "to_leg_unanswered"]
        assert await app.busy_uris() == []
        sid = await app.create_call(uri(agents, "agent2"), uri(customers, "c"), attempt_time_out=1)
        assert (await app.wait_terminal(sid))["status"] == "to_leg_unanswered"
    assert await wait_sipp(agents, customers) == [0, 0]


async def count_calls(store: Store) -> int:
    async with store.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(calls))).scalar_one())


async def test_a_dead_media_worker_ends_its_calls_and_frees_the_agent(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100, timeout_s=10)
    customer = sipp("uas_answer_tone.xml", tone_hz=CUSTOMER_HZ, pause_ms=100, timeout_s=10)
    sid = await app.create_call(uri(agent, "agent"), uri(customer, "customer"))
    await app.wait_leg(sid, "to", "in-progress")
    await asyncio.sleep(1.0)
    [pid] = app.driver.worker_pids()
    os.kill(pid, signal.SIGKILL)  # a worker process of the driver this test started
    details = await ended(app, sid)
    assert details["status"] == "completed"
    assert details["total_talk_time"] == 1
    await until(lambda: app.driver.worker_pids() not in ([], [pid]), timeout_s=10)
    again = sipp("uas_answer_tone_then_bye.xml", tone_hz=AGENT_HZ, pause_ms=300)
    callee = sipp("uas_answer_tone.xml", tone_hz=CUSTOMER_HZ, pause_ms=100)
    sid = await app.create_call(uri(again, "agent"), uri(callee, "customer"))
    assert (await ended(app, sid))["status"] == "completed"
    assert await wait_sipp(again, callee) == [0, 0]


async def test_stopping_the_app_mid_call_hangs_up_both_parties_and_frees_the_agent(
    make_app: AppFactory, store: Store, sipp: Callable[..., Sipp]
) -> None:
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100)
    customer = sipp("uas_answer_tone.xml", tone_hz=CUSTOMER_HZ, pause_ms=100)
    async with make_app() as app:
        sid = await app.create_call(uri(agent, "agent"), uri(customer, "customer"))
        await app.wait_leg(sid, "to", "in-progress")
    assert await wait_sipp(agent, customer) == [0, 0]  # both got BYE
    async with store.read() as conn:
        call = await call_store.get_call(conn, ACCOUNT, sid)
    assert call is not None
    assert (call.state, call.status) == (CallState.TERMINAL, CallStatus.COMPLETED)
    assert await app.busy_uris() == []


async def test_bridge_and_recording_survive_the_agent_putting_the_call_on_hold_and_back(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    """A desk phone's hold/resume is two re-INVITEs; pjsua rebuilds the agent's audio stream on
    each. After the resume the customer (who echoes) still hears the agent, and the recording
    still has both channels."""
    agent = sipp("uas_answer_tone_hold_resume.xml", tone_hz=AGENT_HZ, pause_ms=600)
    customer = sipp("uas_answer_then_bye.xml", pause_ms=3000, rtp_echo=True)
    sid = await app.create_call(
        uri(agent, "agent"),
        uri(customer, "customer"),
        recording={"record": True, "channels": "dual"},
    )
    details = await ended(app, sid)
    assert details["status"] == "completed"
    _, _, _, (left, right) = decode_mp3(await app.recording(details))
    window = slice(int(2.0 * 8000) * 2, int(2.8 * 8000) * 2)
    assert near(dominant_frequency(left[window]), AGENT_HZ)
    assert near(dominant_frequency(right[window]), AGENT_HZ)  # the agent's tone, echoed
    assert power_at(right[window], AGENT_HZ) > 0.1 * power_at(left[window], AGENT_HZ)
    assert await wait_sipp(agent, customer) == [0, 0]


async def test_streaming_sends_both_parties_audio_to_the_bot(
    app: SipApp, sipp: Callable[..., Sipp]
) -> None:
    """The SIP driver's taps feed the same Exotel stream client as the simulated carrier."""
    import base64

    from tests.media.support import Bot

    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=100)
    customer = sipp("uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=2500)
    async with Bot() as bot:
        sid = await app.create_call(
            uri(agent, "agent"),
            uri(customer, "customer"),
            streaming={"url": f"ws://127.0.0.1:{bot.port}/bot", "begin": "to_leg_connect"},
        )
        details = await ended(app, sid)
        assert details["status"] == "completed"
        await until(lambda: bool(bot.events("stop")), timeout_s=10)
    assert [m["event"] for m in bot.messages[:2]] == ["connected", "start"]
    start = bot.events("start")[0]
    assert start["start"]["call_sid"] == sid
    media = bot.events("media")
    pcm = b"".join(base64.b64decode(m["media"]["payload"]) for m in media)
    assert all(len(base64.b64decode(m["media"]["payload"])) % 320 == 0 for m in media)
    assert 1.5 <= len(pcm) / 16000 <= 3.5  # about the 2.5 s of talk, 8 kHz 16-bit
    agent_power, customer_power = power_at(pcm, AGENT_HZ), power_at(pcm, CUSTOMER_HZ)
    assert agent_power > 0.1 * customer_power and customer_power > 0.1 * agent_power
    assert bot.events("stop")[0]["stop"]["reason"] == "callended"
