"""NAT settings on a real call to SIPp: a fixed public address, or the address a STUN server
reports, written into Via, Contact and the SDP instead of the bind address. Both addresses are
other loopback IPs (127.0.0.77, 127.0.0.88) so that nothing leaves the host."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest

from callbridge.telephony.base import DialRequest, LegEventKind
from tests.sip.conftest import EventLog
from tests.sip.sipp import Sipp
from tests.sip.stun import StunServer

pytestmark = pytest.mark.sip


async def invite_seen_by(driver: Any, far: Sipp, events: EventLog) -> str:
    """Place one call to `far`, hang it up, and return the INVITE it received."""
    await driver.dial(DialRequest("L1", "C1", "acme", f"sip:a@{far.uri_host}", "+912241499102", 5))
    await events.wait("L1", LegEventKind.ANSWERED)
    await driver.hangup("L1")
    assert await asyncio.to_thread(far.wait, 10) == 0
    messages = "".join(p.read_text() for p in far.workdir.glob("*_messages.log"))
    invite = messages[messages.index("INVITE sip:") :]
    return invite[: invite.index("\n\n---")]


def sdp_audio_port(invite: str) -> int:
    match = re.search(r"^m=audio (\d+) ", invite, re.MULTILINE)
    assert match, invite
    return int(match.group(1))


async def test_public_address_goes_into_via_contact_and_sdp(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    far = sipp("uas_answer_echo.xml", pause_ms=0, rtp_echo=True, extra=["-trace_msg"])
    driver = await make_driver(workers=1, sip_public_address="127.0.0.77")
    port = driver.worker_ports()[0]
    invite = await invite_seen_by(driver, far, events)
    assert f"Via: SIP/2.0/UDP 127.0.0.77:{port};" in invite
    assert re.search(rf"Contact: <sip:[^>]*@127\.0\.0\.77:{port}[;>]", invite), invite
    sdp = invite[invite.index("v=0") :]
    assert "c=IN IP4 127.0.0.77" in sdp and "127.0.0.1" not in sdp


async def test_stun_mapped_address_goes_into_via_contact_and_sdp(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    far = sipp("uas_answer_echo.xml", pause_ms=0, rtp_echo=True, extra=["-trace_msg"])
    with StunServer(mapped_ip="127.0.0.88") as stun:
        driver = await make_driver(workers=1, sip_stun_servers=stun.address)
        port = driver.worker_ports()[0]
        invite = await invite_seen_by(driver, far, events)
        asked_from = {p for _, p in stun.requests}
    assert f"Via: SIP/2.0/UDP 127.0.0.88:{port};" in invite
    assert re.search(rf"Contact: <sip:[^>]*@127\.0\.0\.88:{port}[;>]", invite), invite
    assert "c=IN IP4 127.0.0.88" in invite
    rtp = sdp_audio_port(invite)
    # The SIP socket and the call's RTP socket each asked the STUN server for their mapping.
    assert {port, rtp} <= asked_from
