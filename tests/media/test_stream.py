"""The Exotel stream client against a real websockets bot on 127.0.0.1, with a ManualClock."""

from __future__ import annotations

import asyncio
import base64

from callbridge.clock import ManualClock
from callbridge.media.audio import dominant_frequency, resample, voice_frequency
from callbridge.media.stream import StreamSession, StreamTarget
from callbridge.telephony.base import Handle
from callbridge.telephony.sim_media import SimMediaPlane
from tests.media.support import Bot, FrameLog, advance, power_at, tone, wait_for

AGENT = "+919900000001"


def _session(clock: ManualClock, plane: SimMediaPlane, url: str, **kw: object) -> StreamSession:
    async def play(pcm: bytes) -> Handle:
        return await plane.play("L1", pcm, loop=False)

    return StreamSession(
        url=url,
        call_sid="c" * 32,
        account_sid="acme",
        from_uri=AGENT,
        to_uri="+919812345678",
        play=play,
        clock=clock,
        custom_parameters={"campaign": "x"},
        retry_delay_s=0.0,
        **kw,  # type: ignore[arg-type]
    )


def _audio(bot: Bot, rate: int = 8000) -> bytes:
    pcm = b"".join(base64.b64decode(str(m["media"]["payload"])) for m in bot.events("media"))
    return resample(pcm, rate, 8000)


def test_target_parses_credentials_rate_and_redacts() -> None:
    target = StreamTarget.parse("wss://bot:s%3Acret@example.com:8443/ws?sample-rate=16000&x=1")
    assert target.url == "wss://example.com:8443/ws?sample-rate=16000&x=1"
    assert target.authorization == "Basic " + base64.b64encode(b"bot:s:cret").decode()
    assert target.sample_rate == 16000
    assert target.custom_parameters == {"x": "1"}
    assert "cret" not in target.redacted and "sample-rate" not in target.redacted


async def test_streams_call_audio_in_exotel_frames(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    async with Bot() as bot:
        session = _session(clock, plane, f"ws://user:p%40ss@127.0.0.1:{bot.port}/b")
        session.start()
        await plane.tap(["L1"], session)
        await wait_for(lambda: len(bot.messages) >= 2)
        await advance(clock, 1.0, io=True)
        await wait_for(lambda: len(bot.events("media")) >= 9)
        assert len(bot.events("media")) == 9  # 1 s, minus 60 ms of jitter hold-back, in 100 ms
        session.send_dtmf("1#")
        await advance(clock, 1.0, io=True)
        await session.stop("callended")
        await wait_for(lambda: bool(bot.events("stop")))

    assert bot.auth_headers == ["Basic " + base64.b64encode(b"user:p@ss").decode()]
    assert bot.messages[0] == {"event": "connected"}
    start = bot.messages[1]
    assert start["event"] == "start" and start["sequence_number"] == "1"
    assert start["stream_sid"] == session.stream_sid
    assert start["start"] == {
        "stream_sid": session.stream_sid,
        "call_sid": "c" * 32,
        "account_sid": "acme",
        "from": AGENT,
        "to": "+919812345678",
        "custom_parameters": {"campaign": "x"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
    }
    later = bot.messages[1:]
    assert [m["sequence_number"] for m in later] == [str(i) for i in range(1, len(later) + 1)]
    assert all(m["stream_sid"] == session.stream_sid for m in later)
    media = bot.events("media")
    sizes = [len(base64.b64decode(str(m["media"]["payload"]))) for m in media]
    assert all(size % 320 == 0 for size in sizes)
    assert set(sizes[:-1]) == {1600}
    assert sum(sizes) == 2.0 * 16000  # exactly the 2 s the stream ran
    assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
    assert [m["media"]["timestamp"] for m in media] == [str(100 * i) for i in range(len(media))]
    assert abs(dominant_frequency(_audio(bot)) - voice_frequency(AGENT)) < 2
    assert [m["dtmf"]["digit"] for m in bot.events("dtmf")] == ["1", "#"]
    stop = bot.events("stop")[0]
    assert stop["stop"]["reason"] == "callended" and stop["stop"]["call_sid"] == "c" * 32
    assert session.stats.media_dropped == 0


async def test_sample_rate_16000_resamples_both_ways(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    heard = FrameLog()
    await plane.tap(["L1"], heard)
    async with Bot() as bot:
        session = _session(clock, plane, f"ws://127.0.0.1:{bot.port}/b?sample-rate=16000")
        session.start()
        await plane.tap(["L1"], session)
        await wait_for(lambda: len(bot.messages) >= 2)
        await bot.send(
            {
                "event": "media",
                "streamSid": session.stream_sid,
                "media": {"payload": base64.b64encode(tone(1900, 0.5, rate=16000)).decode()},
            }
        )
        await wait_for(lambda: session.stats.media_received == 1)
        await advance(clock, 1.0, io=True)
        await session.stop()
        await wait_for(lambda: bool(bot.events("stop")))
    assert bot.messages[1]["start"]["media_format"]["sample_rate"] == "16000"
    assert bot.events("stop")[0]["stop"]["reason"] == "stopped"
    assert {len(base64.b64decode(str(m["media"]["payload"]))) for m in bot.events("media")} == {
        3200
    }
    sent = _audio(bot, 16000)
    assert abs(dominant_frequency(sent[-4800:]) - voice_frequency(AGENT)) < 3
    # The sim's tap on L1 carries what is played to L1, so the bot's reply is in the stream too.
    assert abs(dominant_frequency(sent[1600:8000]) - 1900) < 3
    assert abs(dominant_frequency(heard.pcm("L1")[1600:8000]) - 1900) < 3


async def test_bot_audio_is_played_in_order_marks_wait_for_it_and_clear_drops_it(
    clock: ManualClock,
) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    heard = FrameLog()
    await plane.tap(["L1"], heard)
    async with Bot() as bot:
        session = _session(clock, plane, f"ws://127.0.0.1:{bot.port}/b")
        session.start()
        await wait_for(lambda: len(bot.messages) >= 2)
        sid = session.stream_sid
        payload = base64.b64encode(tone(2000, 1.0, amplitude=16000)).decode()
        await bot.send({"event": "media", "stream_sid": sid, "media": {"payload": payload}})
        await bot.send({"event": "mark", "stream_sid": sid, "mark": {"name": "first"}})
        await wait_for(lambda: session.stats.media_received == 1)
        await asyncio.sleep(0.05)
        await advance(clock, 0.9, io=True)
        assert not bot.events("mark")  # the audio before the mark has not finished playing
        await advance(clock, 0.2, io=True)
        await wait_for(lambda: len(bot.events("mark")) == 1)
        assert bot.events("mark")[0]["mark"] == {"name": "first"}

        long = base64.b64encode(tone(2000, 5.0, amplitude=16000)).decode()
        await bot.send({"event": "media", "streamSid": sid, "media": {"payload": long}})
        await bot.send({"event": "mark", "streamSid": sid, "mark": {"name": "second"}})
        await wait_for(lambda: session.stats.media_received == 2)
        await asyncio.sleep(0.05)
        await advance(clock, 0.5, io=True)
        await bot.send({"event": "clear", "streamSid": sid})
        await wait_for(lambda: len(bot.events("mark")) == 2)  # pending mark answered on clear
        cleared_at = len(heard.frames["L1"])
        await advance(clock, 1.0, io=True)
        await bot.send({"event": "bogus"})
        await bot.send({"event": "media", "media": {"payload": "@@not base64@@"}})
        await wait_for(lambda: session.stats.bad_messages == 2)
        await session.stop("callended")
    pcm = heard.pcm("L1")
    first = pcm[320 : 45 * 320]
    assert power_at(first, 2000) > 20 * power_at(first, 2700)
    after_clear = pcm[(cleared_at + 1) * 320 :]
    assert power_at(after_clear, 2000) < power_at(first, 2000) / 20


async def test_failed_handshake_is_retried_once(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    async with Bot(reject_first=1) as bot:
        session = _session(clock, plane, f"ws://127.0.0.1:{bot.port}/b")
        session.start()
        await wait_for(lambda: len(bot.messages) >= 2)
        assert session.stats.connect_attempts == 2 and session.stats.connected
        await session.stop()
    async with Bot(reject_first=2) as bot:
        session = _session(clock, plane, f"ws://127.0.0.1:{bot.port}/b")
        session.start()
        await wait_for(lambda: session.done)
        assert session.stats.connect_attempts == 2 and not session.stats.connected
        assert session.stats.failure == "InvalidStatus"
        session.on_audio("L1", bytes(320))  # a failed stream swallows audio quietly
        await session.stop()


async def test_dead_bot_never_blocks_the_call_and_audio_is_dropped(clock: ManualClock) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # accepts TCP, never answers the handshake

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    session = _session(
        clock, plane, f"ws://127.0.0.1:{port}/b", connect_timeout_s=0.2, max_outbound_chunks=20
    )
    session.start()
    await plane.tap(["L1"], session)
    await clock.advance(10.0)  # 10 s of call audio while the bot hangs
    assert session.stats.media_dropped >= 75
    await session.stop("callended", timeout_s=1.0)
    assert session.done
    server.close()
    await server.wait_closed()


async def test_stream_is_capped_in_duration(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    async with Bot() as bot:
        session = _session(clock, plane, f"ws://127.0.0.1:{bot.port}/b", max_duration_s=1.0)
        session.start()
        await plane.tap(["L1"], session)
        await wait_for(lambda: len(bot.messages) >= 2)
        await advance(clock, 1.5, io=True)
        await wait_for(lambda: bool(bot.events("stop")))
        assert bot.events("stop")[0]["stop"]["reason"] == "stopped"
        total = sum(len(base64.b64decode(str(m["media"]["payload"]))) for m in bot.events("media"))
        assert total == 16000
        await session.stop("callended")


async def test_bots_writing_numbers_as_strings_or_as_integers_are_both_understood(
    clock: ManualClock,
) -> None:
    """Exotel's examples write every number as a string; bots written against older docs send
    integers, and `streamSid`. Both play, and what callbridge sends back uses strings."""
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    async with Bot() as bot:
        session = _session(clock, plane, f"ws://127.0.0.1:{bot.port}/b")
        session.start()
        await wait_for(lambda: len(bot.messages) >= 2)
        sid = session.stream_sid
        payload = base64.b64encode(tone(2000, 0.2)).decode()
        await bot.send(
            {
                "event": "media",
                "sequence_number": "4",
                "stream_sid": sid,
                "media": {"chunk": "3", "timestamp": "300", "payload": payload},
            }
        )
        await bot.send(
            {
                "event": "media",
                "sequence_number": 5,
                "streamSid": sid,
                "media": {"chunk": 4, "timestamp": 400, "payload": payload},
            }
        )
        await bot.send(
            {"event": "mark", "sequence_number": 6, "streamSid": sid, "mark": {"name": "m"}}
        )
        await wait_for(lambda: session.stats.media_received == 2)
        await advance(clock, 0.6, io=True)
        await wait_for(lambda: len(bot.events("mark")) == 1)
        await session.stop("callended")
        await wait_for(lambda: bool(bot.events("stop")))
    assert session.stats.bad_messages == 0
    assert session.stats.bytes_played == 2 * 3200
    [mark] = bot.events("mark")
    assert mark["mark"] == {"name": "m"} and mark["stream_sid"] == sid
    assert isinstance(mark["sequence_number"], str) and mark["sequence_number"].isdigit()
    for message in bot.messages[1:]:
        assert isinstance(message["sequence_number"], str)
        if message["event"] == "media":
            assert isinstance(message["media"]["chunk"], str)
            assert isinstance(message["media"]["timestamp"], str)
