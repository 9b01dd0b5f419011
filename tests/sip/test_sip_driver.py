"""The SIP driver against SIPp on 127.0.0.1: every SIP outcome as leg events, CANCEL, far-end
BYE, bridging with distinct tones checked through taps, playback, DTMF, inbound calls, and
replacement of a dead worker (capacity: test_sip_capacity.py)."""

from __future__ import annotations

import asyncio
import math
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from callbridge.telephony.base import DialRequest, LegEventKind
from tests.sip.conftest import EventLog, Frames, until
from tests.sip.sipp import Sipp, dominant_hz, rms

pytestmark = pytest.mark.sip

EXOPHONE = "+912241499102"
TONES = [400.0, 600.0, 1000.0]


def dial(leg: str, call: str, contact: str, ring_s: float = 10.0) -> DialRequest:
    return DialRequest(leg, call, "acme", contact, EXOPHONE, ring_s)


def pcm_tone(hz: float, seconds: float = 1.0) -> bytes:
    count = int(8000 * seconds)
    samples = (int(8000 * math.sin(2 * math.pi * hz * n / 8000)) for n in range(count))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


async def wait_sipp(process: Sipp, timeout_s: float = 10.0) -> int:
    return await asyncio.to_thread(process.wait, timeout_s)


async def test_answered_leg_reports_answered_and_far_end_bye_reports_hangup(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await make_driver()
    far = sipp("uas_answer_then_bye.xml", pause_ms=800, rtp_echo=True)
    await driver.dial(dial("L1", "C1", f"sip:agent@{far.uri_host}"))
    answered = await events.wait("L1", LegEventKind.ANSWERED)
    hangup = await events.wait("L1", LegEventKind.HANGUP)
    assert hangup.at >= answered.at
    assert hangup.reason is not None and hangup.reason.startswith("200")
    assert await wait_sipp(far) == 0
    await asyncio.sleep(0.2)
    assert events.kinds("L1") == [LegEventKind.ANSWERED, LegEventKind.HANGUP]


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [
        ("486", "Busy Here", LegEventKind.BUSY),
        ("603", "Decline", LegEventKind.REJECTED),
        ("404", "Not Found", LegEventKind.FAILED),
        ("500", "Server Internal Error", LegEventKind.FAILED),
    ],
)
async def test_final_failure_status_maps_to_leg_outcome(
    make_driver: Callable[..., Any],
    sipp: Callable[..., Sipp],
    events: EventLog,
    code: str,
    reason: str,
    kind: LegEventKind,
) -> None:
    driver = await make_driver(workers=1)
    capacity = driver.capacity()
    far = sipp(f"uas_{code}.xml")
    await driver.dial(dial("L1", "C1", f"sip:agent@{far.uri_host}"))
    event = await events.wait("L1", kind)
    assert event.reason is not None and event.reason.startswith(code)
    assert await wait_sipp(far) == 0
    await until(lambda: driver.capacity() == capacity)


async def test_engine_hangup_while_ringing_cancels_without_an_event(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await make_driver(workers=1)
    capacity = driver.capacity()
    far = sipp("uas_ring_until_cancel.xml")
    await driver.dial(dial("L1", "C1", f"sip:agent@{far.uri_host}"))
    await events.wait("L1", LegEventKind.RINGING)
    await driver.hangup("L1")
    await driver.hangup("L1")  # idempotent
    assert await wait_sipp(far) == 0  # CANCEL → 200, 487 → ACK: the scenario completed
    await until(lambda: driver.capacity() == capacity)
    assert events.kinds("L1") == [LegEventKind.RINGING]


async def test_phone_number_goes_to_the_trunk_with_the_exophone_as_caller_id(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    far = sipp("uas_answer_tone.xml", tone_hz=600, pause_ms=100, extra=["-trace_msg"])
    driver = await make_driver(
        workers=1,
        sip_trunk_host="127.0.0.1",
        sip_trunk_port=far.port,
        sip_trunk_number_format="e164_no_plus",
    )
    await driver.dial(dial("L1", "C1", "09900000001"))
    await events.wait("L1", LegEventKind.RINGING)
    await events.wait("L1", LegEventKind.ANSWERED)
    await driver.hangup("L1")
    assert await wait_sipp(far) == 0
    messages = "".join(p.read_text() for p in far.workdir.glob("*_messages.log"))
    assert f"INVITE sip:919900000001@127.0.0.1:{far.port} SIP/2.0" in messages
    from_header = next(line for line in messages.splitlines() if line.startswith("From:"))
    assert f"sip:{EXOPHONE}@127.0.0.1" in from_header


async def test_offer_is_one_g711_audio_stream_so_a_call_takes_two_rtp_ports(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    far = sipp("uas_answer_echo.xml", pause_ms=0, rtp_echo=True, extra=["-trace_msg"])
    driver = await make_driver(workers=1)
    await driver.dial(dial("L1", "C1", f"sip:agent@{far.uri_host}"))
    await events.wait("L1", LegEventKind.ANSWERED)
    await driver.hangup("L1")
    assert await wait_sipp(far) == 0
    messages = "".join(p.read_text() for p in far.workdir.glob("*_messages.log"))
    invite = messages[messages.index("INVITE sip:") :]
    sdp = invite[invite.index("v=0") : invite.index("\n\n---")]
    media = [line for line in sdp.splitlines() if line.startswith("m=")]
    assert len(media) == 1 and media[0].startswith("m=audio ")
    rtpmaps = sorted(line.split()[1] for line in sdp.splitlines() if line.startswith("a=rtpmap"))
    assert rtpmaps == ["PCMA/8000", "PCMU/8000", "telephone-event/8000"]


async def test_unroutable_contact_reports_failed_after_dial_returns(
    make_driver: Callable[..., Any], events: EventLog
) -> None:
    driver = await make_driver(workers=1)
    await driver.dial(dial("L1", "C1", "+91 12"))
    event = await events.wait("L1", LegEventKind.FAILED, timeout_s=2)
    assert event.reason is not None and "route" in event.reason


@pytest.mark.parametrize("echo_side", ["customer", "agent"])
async def test_bridge_carries_each_partys_tone_to_the_other(
    make_driver: Callable[..., Any],
    sipp: Callable[..., Sipp],
    events: EventLog,
    echo_side: str,
) -> None:
    """One party streams a tone, the other echoes what it hears: after the bridge the echo
    party's audio carries the tone party's frequency, proving that direction of the bridge."""
    driver = await make_driver(workers=2)
    agent_hz, customer_hz = 600.0, 1000.0
    agent = (
        sipp("uas_answer_then_bye.xml", pause_ms=60000, rtp_echo=True)
        if echo_side == "agent"
        else sipp("uas_answer_tone.xml", tone_hz=agent_hz, pause_ms=50)
    )
    customer = (
        sipp("uas_answer_then_bye.xml", pause_ms=60000, rtp_echo=True)
        if echo_side == "customer"
        else sipp("uas_answer_tone.xml", tone_hz=customer_hz, pause_ms=50)
    )
    await driver.dial(dial("A", "C1", f"sip:agent@{agent.uri_host}"))
    await events.wait("A", LegEventKind.ANSWERED)
    await driver.dial(dial("B", "C1", f"sip:customer@{customer.uri_host}"))
    await events.wait("B", LegEventKind.ANSWERED)
    assert driver.worker_of("A") == driver.worker_of("B")
    echo_leg, tone_leg, tone_hz = (
        ("B", "A", agent_hz) if echo_side == "customer" else ("A", "B", customer_hz)
    )

    frames = Frames()
    tap = await driver.tap(["A", "B"], frames)
    # Wait audio played to the echo party comes back to us: playback works.
    wait_audio = await driver.play(echo_leg, pcm_tone(400.0), loop=True)
    await asyncio.sleep(1.0)
    assert dominant_hz(frames.last(echo_leg, 0.5), TONES) == 400.0
    assert dominant_hz(frames.last(tone_leg, 0.5), TONES) == tone_hz

    await driver.bridge("A", "B")  # stops the wait audio
    frames.clear()
    await asyncio.sleep(1.0)
    heard = frames.last(echo_leg, 0.5)
    assert rms(heard) > 500
    assert dominant_hz(heard, TONES) == tone_hz
    assert dominant_hz(frames.last(tone_leg, 0.5), TONES) == tone_hz
    wait_audio.stop()
    tap.stop()
    await driver.hangup("A")
    await driver.hangup("B")


async def test_rfc2833_digit_is_reported_as_dtmf(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await make_driver(workers=1)
    far = sipp("uas_answer_dtmf.xml")
    await driver.dial(dial("L1", "C1", f"sip:agent@{far.uri_host}"))
    await events.wait("L1", LegEventKind.ANSWERED)
    event = await events.wait("L1", LegEventKind.DTMF)
    assert event.digits == "1"
    await driver.hangup("L1")
    assert await wait_sipp(far) == 0


async def test_inbound_call_is_offered_answered_bridged_to_an_agent_and_ended_by_caller_bye(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await make_driver(workers=2)
    offered: list[Any] = []
    driver.set_incoming_handler(offered.append)
    port = driver.worker_ports()[1]
    caller = sipp(
        "uac_call.xml",
        remote=f"127.0.0.1:{port}",
        tone_hz=1000,
        pause_ms=4000,
        keys={"caller": "919900000001"},
        extra=["-s", "912241499102"],
    )
    await until(lambda: bool(offered), timeout_s=10)
    incoming = offered[0]
    assert incoming.from_uri == "+919900000001"
    assert incoming.to_uri == "+912241499102"
    assert driver.worker_of(incoming.leg_sid) == 1

    driver.bind_call(incoming.leg_sid, "IN1")
    agent = sipp("uas_answer_then_bye.xml", pause_ms=60000, rtp_echo=True)
    await driver.dial(dial("AG", "IN1", f"sip:agent@{agent.uri_host}"))
    assert driver.worker_of("AG") == 1
    await events.wait("AG", LegEventKind.ANSWERED)
    await driver.answer(incoming.leg_sid)
    await events.wait(incoming.leg_sid, LegEventKind.ANSWERED)
    await driver.bridge(incoming.leg_sid, "AG")
    frames = Frames()
    tap = await driver.tap(["AG"], frames)
    await asyncio.sleep(0.8)
    # The caller's tone reached the agent (who echoes it back to us).
    assert dominant_hz(frames.last("AG", 0.4), TONES) == 1000.0
    tap.stop()
    hangup = await events.wait(incoming.leg_sid, LegEventKind.HANGUP, timeout_s=10)
    assert hangup.reason is not None
    assert await wait_sipp(caller) == 0
    await driver.hangup("AG")


async def test_inbound_call_hung_up_by_engine_before_answer_is_rejected_480(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await make_driver(workers=1)
    loop = asyncio.get_running_loop()
    driver.set_incoming_handler(lambda call: loop.create_task(driver.hangup(call.leg_sid)) and None)
    caller = sipp(
        "uac_rejected.xml",
        remote=f"127.0.0.1:{driver.worker_ports()[0]}",
        keys={"caller": "919900000001"},
        extra=["-s", "912241499102"],
    )
    assert await wait_sipp(caller) == 0
    await asyncio.sleep(0.2)
    assert events.events == []


async def test_dead_worker_is_replaced_and_its_legs_end(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await make_driver(workers=1)
    capacity = driver.capacity()
    talking = sipp("uas_answer_tone.xml", tone_hz=600, pause_ms=50, timeout_s=15)
    ringing = sipp("uas_ring_until_cancel.xml", timeout_s=15)
    await driver.dial(dial("T", "C1", f"sip:agent@{talking.uri_host}"))
    await events.wait("T", LegEventKind.ANSWERED)
    await driver.dial(dial("R", "C1", f"sip:customer@{ringing.uri_host}"))
    await events.wait("R", LegEventKind.RINGING)
    [pid] = driver.worker_pids()
    os.kill(pid, signal.SIGKILL)
    ended = await events.wait("T", LegEventKind.HANGUP)
    failed = await events.wait("R", LegEventKind.FAILED)
    assert ended.reason == failed.reason == "sip worker died"
    await until(lambda: driver.worker_pids() not in ([], [pid]), timeout_s=15)
    assert driver.capacity() == capacity
    again = sipp("uas_answer_tone.xml", tone_hz=600, pause_ms=50)
    await driver.dial(dial("T2", "C2", f"sip:agent@{again.uri_host}"))
    await events.wait("T2", LegEventKind.ANSWERED)
    await driver.hangup("T2")


@pytest.mark.parametrize(("password", "answered"), [("trunk-secret", True), ("wrong", False)])
async def test_trunk_digest_challenge_is_answered_with_the_trunk_credentials(
    make_driver: Callable[..., Any],
    sipp: Callable[..., Sipp],
    events: EventLog,
    password: str,
    answered: bool,
) -> None:
    far = sipp("uas_digest_auth.xml", extra=["-trace_msg"])
    driver = await make_driver(
        workers=1,
        sip_trunk_host="127.0.0.1",
        sip_trunk_port=far.port,
        sip_trunk_username="trunkuser",
        sip_trunk_password=password,
    )
    await driver.dial(dial("L1", "C1", "+919900000001"))
    if answered:
        await events.wait("L1", LegEventKind.ANSWERED)
        await driver.hangup("L1")
        assert await wait_sipp(far) == 0
    else:
        event = await events.wait("L1", LegEventKind.FAILED)
        assert event.reason is not None and "403" in event.reason
        await wait_sipp(far)
    messages = "".join(p.read_text() for p in far.workdir.glob("*_messages.log"))
    assert 'Authorization: Digest username="trunkuser"' in messages
    assert password not in messages  # only the digest goes on the wire


async def test_trunk_over_tcp_carries_the_whole_call(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    far = sipp("uas_answer_then_bye.xml", pause_ms=300, extra=["-t", "t1", "-trace_msg"])
    driver = await make_driver(
        workers=1,
        sip_trunk_host="127.0.0.1",
        sip_trunk_port=far.port,
        sip_trunk_transport="tcp",
    )
    await driver.dial(dial("L1", "C1", "+919900000001"))
    await events.wait("L1", LegEventKind.ANSWERED)
    await events.wait("L1", LegEventKind.HANGUP)  # the far end's BYE, over the same TCP link
    assert await wait_sipp(far) == 0
    messages = "".join(p.read_text() for p in far.workdir.glob("*_messages.log"))
    assert "SIP/2.0/TCP" in messages and "SIP/2.0/UDP" not in messages


async def test_outbound_proxy_receives_the_trunk_invite(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    proxy = sipp("uas_answer_then_bye.xml", pause_ms=300, extra=["-trace_msg"])
    driver = await make_driver(
        workers=1,
        sip_trunk_host="trunk.invalid",
        sip_trunk_port=5060,
        sip_outbound_proxy=f"sip:{proxy.uri_host};lr",
    )
    await driver.dial(dial("L1", "C1", "+919900000001"))
    await events.wait("L1", LegEventKind.ANSWERED)
    await events.wait("L1", LegEventKind.HANGUP)
    assert await wait_sipp(proxy) == 0
    messages = "".join(p.read_text() for p in proxy.workdir.glob("*_messages.log"))
    # Sent to the proxy, addressed to the trunk, routed through the proxy (loose routing).
    assert "INVITE sip:+919900000001@trunk.invalid:5060 SIP/2.0" in messages
    assert f"Route: <sip:{proxy.uri_host};lr>" in messages
