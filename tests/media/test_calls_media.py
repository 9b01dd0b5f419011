"""Call media through the API: `wait_audio_url`, `playback` and `streaming` on click-to-calls
placed with POST /v3/accounts/{sid}/calls, on the in-process app with the simulated carrier, a
real WAV server and a real WebSocket bot on 127.0.0.1.

Timeline of every call here unless a test says otherwise: the agent answers at t=1 s (the
customer is dialled then), the customer answers at t=3 s and hangs up at t=6 s (3 s of talk).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from callbridge.clock import ManualClock
from callbridge.media.audio import FALLBACK_TONE_HZ, dominant_frequency, resample, voice_frequency
from callbridge.media.wav import make_wav
from callbridge.settings import Settings
from callbridge.store.calls import get_call_options
from callbridge.store.repo import Store

from ..harness import AGENT, CUSTOMER
from .calls_support import MediaHarness, media_app
from .support import Bot, decode_mp3, http_server, power_at, tone, wait_for

WAIT_HZ, PLAYBACK_HZ, BOT_HZ, BOT_LONG_HZ = 2100, 1950, 2250, 2650
AGENT_HZ, CUSTOMER_HZ = voice_frequency(AGENT), voice_frequency(CUSTOMER)
FRAME = 320  # bytes of one 20 ms frame at 8 kHz
SECOND = 16000  # bytes of one second at 8 kHz


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(allow_private_urls=True, log_level="WARNING", data_dir=tmp_path)


def standard_phones(h: MediaHarness, *, talk_s: float = 3) -> None:
    h.phone(AGENT, "answer", answer_after_s=1)
    h.phone(CUSTOMER, "answer", answer_after_s=2, hangup_after_s=talk_s)


async def place(h: MediaHarness, **fields: Any) -> str:
    r = await h.create_call(**fields)
    assert r.status_code == 200, r.text
    details = r.json()["response"]["call_details"]
    assert details["state"] == "active"
    sid: str = details["sid"]
    return sid


def seconds(pcm: bytes, start_s: float, end_s: float) -> bytes:
    return pcm[int(start_s * SECOND) // 2 * 2 : int(end_s * SECOND) // 2 * 2]


def dual(mp3: bytes) -> tuple[float, bytes, bytes]:
    nchannels, _, duration_s, channels = decode_mp3(mp3)
    assert nchannels == 2
    return duration_s, channels[0], channels[1]


# -- wait audio ---------------------------------------------------------------------------


async def test_wait_audio_loops_to_the_agent_while_the_customer_rings_and_stops_on_answer(
    store: Store, clock: ManualClock, settings: Settings
) -> None:
    wav = make_wav(tone(WAIT_HZ, 0.5, rate=16000, amplitude=16000), sample_rate=16000)
    with http_server({"/wait.wav": (200, wav)}) as base:
        async with media_app(store, clock, settings=settings) as h:
            standard_phones(h)
            sid = await place(
                h,
                wait_audio_url=f"{base}/wait.wav",
                recording={"record": True, "channels": "dual"},
            )
            from_leg, _ = await h.leg_sids(sid)
            agent_ear = await h.tap([from_leg])
            await h.run(1.0)  # the agent answers; the WAV is fetched over real HTTP
            from_leg, to_leg = await h.leg_sids(sid)
            assert to_leg is not None
            customer_ear = await h.tap([to_leg])
            await wait_for(lambda: len(h.carrier.played) == 1)
            details = await h.terminal(sid)
            mp3 = await h.recording(details)

    assert details["status"] == "completed" and details["total_talk_time"] == 3
    # 0.5 s at 8 kHz, looped, to leg 1, when it answered (the manual clock sums float steps)
    assert h.carrier.played == [(from_leg, 8000, True, pytest.approx(1.0))]
    agent = agent_ear.pcm(from_leg)  # starts at t=1 s, when the agent answered
    ringing, talking = seconds(agent, 0.1, 1.95), seconds(agent, 2.05, 5.0)
    assert abs(dominant_frequency(ringing) - WAIT_HZ) < 3  # looped past its 0.5 s length
    assert power_at(talking, WAIT_HZ) < power_at(ringing, WAIT_HZ) / 50
    assert abs(dominant_frequency(talking) - AGENT_HZ) < 3
    customer = customer_ear.pcm(to_leg)
    assert power_at(customer, WAIT_HZ) < power_at(ringing, WAIT_HZ) / 50
    duration_s, left, right = dual(mp3)
    assert abs(duration_s - 3) < 0.2
    for channel in (left, right):  # the recording starts at the bridge: no wait audio in it
        assert power_at(channel, WAIT_HZ) < power_at(ringing, WAIT_HZ) / 50


def _big_wav() -> bytes:
    return make_wav(tone(WAIT_HZ, 1.0, amplitude=16000))  # 16 kB > the 4 kB limit below


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ((200, b"<html>not audio</html>"), "not a RIFF/WAVE file"),
        ((200, _big_wav()), "audio larger than 4096 bytes"),
        (None, "audio URL answered HTTP 404"),
    ],
    ids=["not-a-wav", "too-big", "404"],
)
async def test_unusable_wait_audio_becomes_a_logged_fallback_tone_and_the_call_goes_on(
    store: Store,
    clock: ManualClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    route: tuple[int, bytes] | None,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="callbridge")
    settings = Settings(allow_private_urls=True, data_dir=tmp_path, media_max_download_bytes=4096)
    routes = {"/wait.wav": route} if route is not None else {}
    with http_server(routes) as base:  # type: ignore[arg-type]
        async with media_app(store, clock, settings=settings) as h:
            standard_phones(h)
            sid = await place(h, wait_audio_url=f"{base}/wait.wav")
            from_leg, _ = await h.leg_sids(sid)
            agent_ear = await h.tap([from_leg])
            await h.run(1.0)
            await wait_for(lambda: len(h.carrier.played) == 1)
            details = await h.terminal(sid)

    assert details["status"] == "completed" and details["total_talk_time"] == 3
    agent = agent_ear.pcm(from_leg)
    # The fallback tone pulses 1 s on, 1 s off, under the agent's own voice.
    assert power_at(seconds(agent, 0.1, 0.95), FALLBACK_TONE_HZ) > 1000
    assert power_at(seconds(agent, 2.05, 5.0), FALLBACK_TONE_HZ) < 50
    warnings = [(r.getMessage(), getattr(r, "reason", None)) for r in caplog.records]
    assert ("media: audio unusable", reason) in warnings
    assert ("media: wait audio replaced by fallback tone", None) in warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_wait_audio_server_that_never_answers_does_not_hold_up_the_call(
    store: Store, clock: ManualClock, settings: Settings
) -> None:
    def hang(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(3)

    with http_server({"/slow.wav": hang}) as base:
        async with media_app(store, clock, settings=settings) as h:
            standard_phones(h)
            started = time.monotonic()
            sid = await place(h, wait_audio_url=f"{base}/slow.wav")
            details = await h.terminal(sid)
            elapsed = time.monotonic() - started

    assert details["status"] == "completed" and details["total_talk_time"] == 3
    assert h.carrier.played == []  # nothing arrived before the customer answered
    assert elapsed < 2.0


async def test_a_stream_sample_rate_other_than_8_16_24_khz_is_refused(
    store: Store, clock: ManualClock, settings: Settings
) -> None:
    async with media_app(store, clock, settings=settings) as h:
        r = await h.create_call(streaming={"url": "ws://127.0.0.1:9/bot?sample-rate=11025"})
        assert r.status_code == 400, r.text
        message = r.json()["response"]["error_data"]["message"]
        assert message == "streaming.url: sample-rate must be 8000, 16000 or 24000"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"wait_audio_url": "http://127.0.0.1:9/wait.wav"}, "wait_audio_url"),
        ({"wait_audio_url": "http://10.1.2.3/wait.wav"}, "wait_audio_url"),
        ({"playback": [{"to": "both", "value": "http://[::1]/x.wav"}]}, "playback.0.value"),
        ({"streaming": {"url": "ws://u:p@127.0.0.1:9/s"}}, "streaming.url"),
    ],
    ids=["loopback", "private", "playback-ipv6-loopback", "stream-loopback"],
)
async def test_private_media_urls_are_refused_at_request_time_when_not_allowed(
    store: Store, clock: ManualClock, tmp_path: Path, fields: dict[str, Any], field: str
) -> None:
    settings = Settings(allow_private_urls=False, data_dir=tmp_path)
    async with media_app(store, clock, settings=settings) as h:
        r = await h.create_call(**fields)
        assert r.status_code == 400, r.text
        error = r.json()["response"]["error_data"]
        assert error["message"].startswith(f"{field}: ")
        assert "non-public" in error["message"]
        assert ":p@" not in r.text
        # Nothing was dialled and the agent is still free for the next call.
        assert h.sim.active_legs == 0
        assert (await h.create_call()).status_code == 200


# -- playback -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "agent_hears", "customer_hears"),
    [("both", True, True), ("callee", False, True), ("caller", True, False)],
)
async def test_playback_is_played_at_connect_to_the_right_party(
    store: Store,
    clock: ManualClock,
    settings: Settings,
    to: str,
    agent_hears: bool,
    customer_hears: bool,
) -> None:
    wav = make_wav(tone(PLAYBACK_HZ, 1.0, amplitude=16000))
    with http_server({"/hello.wav": (200, wav)}) as base:
        async with media_app(store, clock, settings=settings) as h:
            standard_phones(h)
            sid = await place(
                h,
                playback=[{"event": "start", "to": to, "value": f"{base}/hello.wav"}],
                recording={"record": True, "channels": "dual"},
            )
            await h.run(1.0)
            await asyncio.sleep(0.2)  # real time for the prefetch that starts at agent answer
            details = await h.terminal(sid)
            from_leg, to_leg = await h.leg_sids(sid)
            mp3 = await h.recording(details)

    assert details["status"] == "completed"
    expected = {leg for leg, hears in ((from_leg, agent_hears), (to_leg, customer_hears)) if hears}
    assert {(leg, n, loop, round(at, 6)) for leg, n, loop, at in h.carrier.played} == {
        (leg, SECOND, False, 3.0) for leg in expected
    }
    duration_s, left, right = dual(mp3)
    assert abs(duration_s - 3) < 0.2
    for channel, hears, voice in (
        (left, agent_hears, AGENT_HZ),
        (right, customer_hears, CUSTOMER_HZ),
    ):
        during, after = seconds(channel, 0.1, 0.9), seconds(channel, 1.2, 2.9)
        assert abs(dominant_frequency(after) - voice) < 3
        if hears:
            assert abs(dominant_frequency(during) - PLAYBACK_HZ) < 3
            assert power_at(after, PLAYBACK_HZ) < power_at(during, PLAYBACK_HZ) / 20
        else:
            assert abs(dominant_frequency(during) - voice) < 3
            assert power_at(during, PLAYBACK_HZ) < 100


# -- streaming --------------------------------------------------------------------------------


def media_pcm(messages: list[dict[str, Any]]) -> list[bytes]:
    return [base64.b64decode(str(m["media"]["payload"])) for m in messages]


async def test_stream_from_leg_connect_speaks_exotels_protocol_through_the_call(
    store: Store,
    clock: ManualClock,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # the production default
    async with Bot() as bot, media_app(store, clock, settings=settings) as h:
        standard_phones(h)
        url = f"ws://botuser:s3cr3t-pw@127.0.0.1:{bot.port}/stream?campaign=spring"
        sid = await place(
            h,
            streaming={"url": url, "begin": "from_leg_connect"},
            recording={"record": True, "channels": "dual"},
        )
        await h.run(1.0)  # agent answers: the stream starts
        await wait_for(lambda: len(bot.messages) >= 2)
        await h.run(1.0)  # t=2: one second of streamed audio, paced by the clock
        await wait_for(lambda: len(bot.events("media")) >= 9)
        await asyncio.sleep(0.05)
        assert len(bot.events("media")) == 9  # 1 s minus the 60 ms jitter hold-back
        await h.run(2.0)  # t=4: bridged at t=3
        r = await h.sim_action(CUSTOMER, "dtmf", digits="12#")
        assert r.json()["legs_affected"] == 1
        details = await h.terminal(sid)
        await wait_for(lambda: bool(bot.events("stop")))
        mp3 = await h.recording(details)

    assert details["status"] == "completed" and details["digits"] == "12#"
    assert bot.auth_headers == ["Basic " + base64.b64encode(b"botuser:s3cr3t-pw").decode()]
    assert "s3cr3t" not in caplog.text
    async with store.read() as conn:
        stored = await get_call_options(conn, sid)
    # The bot's password lives only in the running call, never in the database.
    assert stored is not None and stored.streaming is not None
    assert "s3cr3t" not in stored.streaming.url and "botuser" not in stored.streaming.url

    assert bot.messages[0] == {"event": "connected"}
    start = bot.messages[1]
    stream_sid = start["stream_sid"]
    assert start == {
        "event": "start",
        "sequence_number": "1",
        "stream_sid": stream_sid,
        "start": {
            "stream_sid": stream_sid,
            "call_sid": sid,
            "account_sid": "acme",
            "from": AGENT,
            "to": CUSTOMER,
            "custom_parameters": {"campaign": "spring"},  # the URL's own query parameters
            "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
        },
    }
    later = bot.messages[1:]
    assert [m["sequence_number"] for m in later] == [str(i) for i in range(1, len(later) + 1)]
    assert {m["stream_sid"] for m in later} == {stream_sid}
    assert [m["event"] for m in later[-1:]] == ["stop"]

    media = bot.events("media")
    chunks = media_pcm(media)
    assert all(len(c) % FRAME == 0 for c in chunks)
    assert {len(c) for c in chunks[:-1]} == {1600}  # 100 ms chunks
    assert sum(map(len, chunks)) == 5 * SECOND  # agent answer (t=1) to hang-up (t=6)
    assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
    assert [m["media"]["timestamp"] for m in media] == [str(100 * i) for i in range(len(media))]
    audio = b"".join(chunks)
    before_bridge, after_bridge = seconds(audio, 0.1, 1.9), seconds(audio, 2.1, 4.9)
    assert abs(dominant_frequency(before_bridge) - AGENT_HZ) < 3  # only the agent, ringing
    assert power_at(before_bridge, CUSTOMER_HZ) < power_at(before_bridge, AGENT_HZ) / 20
    assert power_at(after_bridge, CUSTOMER_HZ) > power_at(after_bridge, AGENT_HZ) / 3  # both
    assert power_at(after_bridge, AGENT_HZ) > power_at(after_bridge, CUSTOMER_HZ) / 3

    dtmf = bot.events("dtmf")
    assert [m["dtmf"]["digit"] for m in dtmf] == ["1", "2", "#"]
    first_dtmf = bot.messages.index(dtmf[0])
    assert 25 <= len([m for m in bot.messages[:first_dtmf] if m["event"] == "media"]) <= 31

    stop = bot.events("stop")
    assert len(stop) == 1
    assert stop[0]["stop"] == {"call_sid": sid, "account_sid": "acme", "reason": "callended"}
    duration_s, left, right = dual(mp3)  # recorded and streamed at once
    assert abs(duration_s - 3) < 0.2
    assert abs(dominant_frequency(left) - AGENT_HZ) < 3
    assert abs(dominant_frequency(right) - CUSTOMER_HZ) < 3


async def test_bidirectional_stream_at_16khz_from_to_leg_connect(
    store: Store, clock: ManualClock, settings: Settings
) -> None:
    async with Bot() as bot, media_app(store, clock, settings=settings) as h:
        standard_phones(h, talk_s=6)  # hangs up at t=9
        sid = await place(
            h,
            streaming={
                "url": f"ws://127.0.0.1:{bot.port}/s?sample-rate=16000",
                "begin": "to_leg_connect",
            },
            recording={"record": True, "channels": "dual"},
        )
        await h.run(2.98)
        await asyncio.sleep(0.1)
        assert bot.messages == []  # nothing before the legs connect
        await h.run(0.02)  # t=3: bridged, the stream starts
        await wait_for(lambda: len(bot.messages) >= 2)
        stream_sid = bot.messages[1]["stream_sid"]
        from_leg, _ = await h.leg_sids(sid)

        one_s = base64.b64encode(tone(BOT_HZ, 1.0, rate=16000, amplitude=16000)).decode()
        await bot.send({"event": "media", "stream_sid": stream_sid, "media": {"payload": one_s}})
        await bot.send({"event": "mark", "streamSid": stream_sid, "mark": {"name": "one"}})
        await wait_for(lambda: len(h.carrier.played) == 1)
        played_at = h.carrier.played[0][3]
        assert h.carrier.played[0][:3] == (from_leg, SECOND, False)  # to the agent, at 8 kHz
        await h.run(0.9)
        await asyncio.sleep(0.1)
        assert bot.events("mark") == []  # its audio is still playing
        await h.run(0.2)
        await wait_for(lambda: len(bot.events("mark")) == 1)
        assert bot.events("mark")[0]["mark"] == {"name": "one"}

        five_s = base64.b64encode(tone(BOT_LONG_HZ, 5.0, rate=16000, amplitude=16000)).decode()
        await bot.send({"event": "media", "streamSid": stream_sid, "media": {"payload": five_s}})
        await bot.send({"event": "mark", "streamSid": stream_sid, "mark": {"name": "two"}})
        await wait_for(lambda: len(h.carrier.played) == 2)
        long_at = h.carrier.played[1][3]
        await h.run(0.5)
        await bot.send({"event": "clear", "streamSid": stream_sid})
        await wait_for(lambda: len(bot.events("mark")) == 2)  # a cleared mark is answered
        cleared_at = clock.monotonic()
        details = await h.terminal(sid)
        await wait_for(lambda: bool(bot.events("stop")))
        mp3 = await h.recording(details)

    assert details["status"] == "completed" and details["total_talk_time"] == 6
    start = bot.events("start")[0]["start"]
    assert start["media_format"] == {
        "encoding": "audio/x-raw",
        "sample_rate": "16000",
        "bit_rate": "16",
    }
    chunks = media_pcm(bot.events("media"))
    assert {len(c) for c in chunks[:-1]} == {3200} and all(len(c) % FRAME == 0 for c in chunks)
    assert sum(map(len, chunks)) == 6 * 2 * SECOND  # t=3 to t=9 at 16 kHz
    audio = resample(b"".join(chunks), 16000, 8000)
    assert power_at(seconds(audio, 4, 5.9), CUSTOMER_HZ) > 1000
    assert power_at(seconds(audio, 4, 5.9), AGENT_HZ) > 1000
    assert bot.events("stop")[0]["stop"]["reason"] == "callended"

    # The recording starts at the bridge (t=3): the bot's audio is on the agent's side only.
    duration_s, left, right = dual(mp3)
    assert abs(duration_s - 6) < 0.2
    t1 = played_at - 3.0
    first = seconds(left, t1 + 0.1, t1 + 0.9)
    assert abs(dominant_frequency(first) - BOT_HZ) < 3
    assert power_at(seconds(left, t1 + 1.1, long_at - 3.0 - 0.05), BOT_HZ) < 100
    t2, tc = long_at - 3.0, cleared_at - 3.0
    assert abs(dominant_frequency(seconds(left, t2 + 0.05, tc - 0.05)) - BOT_LONG_HZ) < 3
    after_clear = seconds(left, tc + 0.1, 5.9)
    assert (
        power_at(after_clear, BOT_LONG_HZ)
        < power_at(seconds(left, t2 + 0.05, tc - 0.05), BOT_LONG_HZ) / 50
    )
    assert abs(dominant_frequency(after_clear) - AGENT_HZ) < 3
    assert power_at(right, BOT_HZ) < 100 and power_at(right, BOT_LONG_HZ) < 100


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("failure", ["down", "refuses-handshake", "never-answers"])
async def test_a_failing_bot_never_breaks_the_call(
    store: Store,
    clock: ManualClock,
    settings: Settings,
    failure: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # takes the handshake request, never answers it
        await asyncio.sleep(30)

    caplog.set_level(logging.WARNING, logger="callbridge")
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with Bot(reject_first=2) as refusing, media_app(store, clock, settings=settings) as h:
        port = {
            "down": _closed_port(),
            "refuses-handshake": refusing.port,
            "never-answers": server.sockets[0].getsockname()[1],
        }[failure]
        standard_phones(h)
        started = time.monotonic()
        sid = await place(
            h,
            streaming={"url": f"ws://127.0.0.1:{port}/s", "begin": "from_leg_connect"},
            recording={"record": True, "channels": "single"},
        )
        await h.run(1.0)
        if failure == "refuses-handshake":
            await wait_for(lambda: len(refusing.auth_headers) == 2)  # retried once, then dropped
        details = await h.terminal(sid)
        elapsed = time.monotonic() - started
        mp3 = await h.recording(details)
    server.close()

    assert details["status"] == "completed" and details["total_talk_time"] == 3
    assert elapsed < 3.0
    _, _, duration_s, _ = decode_mp3(mp3)
    assert abs(duration_s - 3) < 0.2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    if failure == "refuses-handshake":
        assert len(refusing.auth_headers) == 2
