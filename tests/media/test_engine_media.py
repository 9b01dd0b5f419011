"""Per-call media orchestration end to end: real WAV server, real bot, sim media plane, MP3 out."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence

import httpx

from callbridge.clock import ManualClock
from callbridge.domain.options import (
    CallOptions,
    Playback,
    PlaybackTo,
    RecordingChannels,
    RecordingOptions,
    StreamBegin,
    StreamingOptions,
)
from callbridge.engine.media import CallMediaSession, MediaServices
from callbridge.media.audio import FALLBACK_TONE_HZ, dominant_frequency, voice_frequency
from callbridge.media.wav import make_wav
from callbridge.telephony.base import AudioConsumer, Handle
from callbridge.telephony.sim_media import SimMediaPlane
from tests.media.support import (
    Bot,
    FrameLog,
    PlaneDriver,
    advance,
    allow_all,
    decode_mp3,
    http_server,
    power_at,
    tone,
    wait_for,
)

AGENT, CUSTOMER = "+919900000001", "+919812345678"
WAIT_HZ, PLAYBACK_HZ, BOT_HZ = 2100, 1950, 2250


def _session(
    clock: ManualClock,
    driver: PlaneDriver,
    options: CallOptions,
    http: httpx.AsyncClient,
    **kw: object,
) -> CallMediaSession:
    services = MediaServices(http=http, url_guard=allow_all, **kw)  # type: ignore[arg-type]
    return CallMediaSession(
        driver,
        clock,
        "c" * 32,
        "acme",
        AGENT,
        CUSTOMER,
        options,
        services,
    )


async def test_outbound_call_media_end_to_end(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    driver = PlaneDriver(plane)
    probe = FrameLog()
    routes = {
        "/wait.wav": (
            200,
            make_wav(tone(WAIT_HZ, 0.5, rate=16000, amplitude=16000), sample_rate=16000),
        ),
        "/hello.wav": (200, make_wav(tone(PLAYBACK_HZ, 1.0, amplitude=16000))),
    }
    with http_server(routes) as base:  # type: ignore[arg-type]
        async with Bot() as bot, httpx.AsyncClient() as http:
            options = CallOptions(
                recording=RecordingOptions(record=True, channels=RecordingChannels.DUAL),
                wait_audio_url=f"{base}/wait.wav",
                playback=(Playback(url=f"{base}/hello.wav", to=PlaybackTo.CALLEE),),
                streaming=StreamingOptions(
                    url=f"ws://127.0.0.1:{bot.port}/s", begin=StreamBegin.FROM_LEG_CONNECT
                ),
            )
            media = _session(clock, driver, options, http)
            plane.leg_up("from", AGENT)
            await plane.tap(["from"], probe)
            await media.from_leg_answered("from")
            await wait_for(lambda: len(driver.played) == 1 and len(bot.messages) >= 2)
            assert driver.played[0] == ("from", 8000, True)  # wait audio, looped, on leg 1
            await advance(clock, 1.0, io=True)
            plane.leg_up("to", CUSTOMER)
            await media.to_leg_ringing("to")
            await media.bridged("from", "to")
            bridged_at = len(probe.frames["from"])
            await wait_for(lambda: len(driver.played) == 2)
            assert driver.played[1] == ("to", 16000, False)  # playback to the callee only
            payload = base64.b64encode(tone(BOT_HZ, 1.0, amplitude=16000)).decode()
            await bot.send({"event": "media", "stream_sid": "x", "media": {"payload": payload}})
            await wait_for(lambda: len(driver.played) == 3)
            await media.dtmf("to", "5")
            await advance(clock, 4.0, io=True)
            results = await media.finish()
            await wait_for(lambda: bool(bot.events("stop")))
            assert await media.finish() == []

    before = probe.pcm("from")[320 * 5 : bridged_at * 320]
    after = probe.pcm("from")[(bridged_at + 1) * 320 : (bridged_at + 40) * 320]
    assert abs(dominant_frequency(before) - WAIT_HZ) < 3
    assert power_at(after, WAIT_HZ) < power_at(before, WAIT_HZ) / 20  # wait audio stopped

    assert len(results) == 1
    result = results[0]
    assert (result.duration_s, result.channels) == (4.0, 2)
    channels, _, decoded_s, (left, right) = decode_mp3(result.mp3_bytes)
    assert channels == 2 and abs(decoded_s - 4.0) < 0.5
    assert power_at(left[4000:16000], BOT_HZ) > 20 * power_at(left[40000:], BOT_HZ)  # bot → leg 1
    assert abs(dominant_frequency(left[40000:]) - voice_frequency(AGENT)) < 3
    assert power_at(right[4000:16000], PLAYBACK_HZ) > 20 * power_at(right[40000:], PLAYBACK_HZ)
    assert abs(dominant_frequency(right[40000:]) - voice_frequency(CUSTOMER)) < 3

    assert bot.events("stop")[0]["stop"]["reason"] == "callended"
    assert [m["dtmf"]["digit"] for m in bot.events("dtmf")] == ["5"]
    assert bot.messages[1]["start"]["from"] == AGENT


async def test_unusable_wait_audio_falls_back_to_a_tone_and_refused_stream_is_skipped(
    clock: ManualClock,
) -> None:
    plane = SimMediaPlane(clock)
    driver = PlaneDriver(plane)
    probe = FrameLog()

    async def refuse_ws(url: str) -> None:
        raise PermissionError("private")

    with http_server({}) as base:
        async with httpx.AsyncClient() as http:
            options = CallOptions(
                recording=RecordingOptions(record=True),
                wait_audio_url=f"{base}/missing.wav",
                streaming=StreamingOptions(url="ws://10.0.0.1/s", begin=StreamBegin.TO_LEG_CONNECT),
            )
            media = _session(clock, driver, options, http, stream_url_guard=refuse_ws)
            plane.leg_up("from", AGENT)
            await plane.tap(["from"], probe)
            await media.from_leg_answered("from")
            await wait_for(lambda: len(driver.played) == 1)
            await advance(clock, 1.0)
            plane.leg_up("to", CUSTOMER)
            await media.bridged("from", "to")
            await advance(clock, 2.0)
            results = await media.finish()
    assert abs(dominant_frequency(probe.pcm("from")[320 * 5 : 320 * 50]) - FALLBACK_TONE_HZ) < 3
    assert [(r.duration_s, r.channels) for r in results] == [(2.0, 1)]


class BrokenDriver(PlaneDriver):
    async def tap(self, leg_sids: Sequence[str], consumer: AudioConsumer) -> Handle:
        raise RuntimeError("driver exploded")

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool = False) -> Handle:
        raise RuntimeError("driver exploded")


async def test_driver_failures_never_reach_the_engine(clock: ManualClock) -> None:
    driver = BrokenDriver(SimMediaPlane(clock))
    async with httpx.AsyncClient() as http:
        options = CallOptions(
            recording=RecordingOptions(record=True),
            wait_audio_url="http://127.0.0.1:9/none.wav",
        )
        media = _session(clock, driver, options, http)
        await media.from_leg_answered("from")
        await asyncio.sleep(0.05)
        await media.bridged("from", "to")
        await media.dtmf("from", "1")
        await advance(clock, 1.0)
        results = await media.finish()
    assert [r.duration_s for r in results] == [1.0]
