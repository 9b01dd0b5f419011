"""Recordings on the SIP driver: made by pjmedia recorders in the worker, encoded to MP3 there
as the WAV files grow, and collected by the API process while the call runs. The file-reading
and encoding parts are tested on their own with WAVs written the way pjmedia writes them; the
whole path with SIPp parties of distinct tones, including a worker crash mid-recording."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from callbridge.domain.options import RecordingChannels, RecordingFormat
from callbridge.media.audio import dominant_frequency
from callbridge.telephony.base import DialRequest, DriverError, LegEventKind
from callbridge.telephony.sip_recording import RecordingEncoder, RecordingJob, SipRecording, WavTail
from tests.media.support import decode_mp3, power_at, tone
from tests.sip.conftest import EventLog, until
from tests.sip.sipp import Sipp

AGENT_HZ, CUSTOMER_HZ = 600.0, 1000.0


def wav_header() -> bytes:
    """The 44-byte header a WAV writer puts first, sizes still unknown (0)."""
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    return b"RIFF" + bytes(4) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + bytes(4)


MP3_SLACK_S = 0.2
"""A decoded MP3 is longer than what was encoded by the encoder's delay and last frame."""


def near(hz: float, expected: float) -> bool:
    return abs(hz - expected) <= 20.0


# --- reading and encoding what the recorders wrote -------------------------------------------


def test_wav_tail_returns_whole_new_frames_as_the_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    tail = WavTail(str(path))
    assert tail.read(final=False) == b""  # not created yet
    path.write_bytes(wav_header()[:20])
    assert tail.read(final=False) == b""  # header not complete
    with path.open("ab") as out:
        out.write(wav_header()[20:] + bytes(range(250)) * 2)  # 500 bytes: one frame and some
    first = tail.read(final=False)
    assert first == (bytes(range(250)) * 2)[:320]
    with path.open("ab") as out:
        out.write(b"\x01" * 100)
    assert tail.read(final=False) == b""  # 280 bytes: not a whole frame yet
    rest = tail.read(final=True)
    assert len(rest) == 320 and rest[:280] == (bytes(range(250)) * 2)[320:] + b"\x01" * 100
    tail.close()
    assert not path.exists()


def test_dual_job_keeps_the_channels_in_step_and_pads_the_shorter_at_the_end(
    tmp_path: Path,
) -> None:
    left, right = tmp_path / "L.wav", tmp_path / "R.wav"
    left.write_bytes(wav_header() + tone(AGENT_HZ, 1.0))
    right.write_bytes(wav_header() + tone(CUSTOMER_HZ, 0.5))
    job = RecordingJob([str(left), str(right)], RecordingFormat.MP3)
    partial = job.pump(final=False)
    assert job.frames == 25  # only what both channels have
    with right.open("ab") as out:
        out.write(tone(CUSTOMER_HZ, 0.3))
    mp3 = partial + job.pump(final=True)
    assert job.frames == 50
    channels, _, duration_s, (pcm_left, pcm_right) = decode_mp3(mp3)
    assert channels == 2 and 0 <= duration_s - 1.0 <= MP3_SLACK_S
    assert near(dominant_frequency(pcm_left[:8000]), AGENT_HZ)
    assert near(dominant_frequency(pcm_right[:8000]), CUSTOMER_HZ)
    # The right channel had 0.8 s: its last 0.2 s are silence (after the encoder's delay).
    padding = slice(int((0.8 + MP3_SLACK_S) * 8000) * 2, int(1.0 * 8000) * 2 + 200)
    assert power_at(pcm_right[padding], CUSTOMER_HZ) < 0.01 * power_at(pcm_left[padding], AGENT_HZ)
    job.close()


def test_encoder_thread_sends_mp3_while_recording_and_the_rest_when_finished(
    tmp_path: Path,
) -> None:
    messages: list[tuple[Any, ...]] = []
    arrived = threading.Event()

    def emit(message: tuple[Any, ...]) -> None:
        messages.append(message)
        arrived.set()

    path = tmp_path / "M.wav"
    path.write_bytes(wav_header() + tone(AGENT_HZ, 0.6))
    encoder = RecordingEncoder(emit, flush_s=0.05)
    try:
        encoder.start(7, [str(path)], RecordingFormat.MP3)
        assert arrived.wait(5.0)
        first = messages[0]
        assert first[:2] == ("rec_data", 7) and first[3] == 30 and first[2]
        with path.open("ab") as out:
            out.write(tone(AGENT_HZ, 0.4))
        encoder.finish(7)
        deadline = time.monotonic() + 5.0
        while not any(m[0] == "rec_done" for m in messages) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        encoder.stop()
    done = messages[-1]
    assert done[:3] == ("rec_done", 7, 50) and done[3] > 1
    mp3 = b"".join(m[2] for m in messages if m[0] == "rec_data")
    channels, _, duration_s, (pcm,) = decode_mp3(mp3)
    assert channels == 1 and 0 <= duration_s - 1.0 <= MP3_SLACK_S
    assert near(dominant_frequency(pcm), AGENT_HZ)
    assert not path.exists()


async def test_api_side_keeps_what_arrived_when_the_worker_never_finishes() -> None:
    async def stop() -> None:
        raise DriverError("SIP worker 0 exited")

    recording = SipRecording(1, RecordingFormat.MP3, stop, finish_timeout_s=1.0)
    recording.on_data(b"\xff\xf3first", 50)
    recording.on_data(b"\xff\xf3second", 75)
    assert recording.received_s == 1.5
    result = await recording.finish()
    assert (result.mp3_bytes, result.duration_s) == (b"\xff\xf3first\xff\xf3second", 1.5)
    assert await recording.finish() is result
    recording.on_data(b"late", 100)  # nothing arrives after the end
    assert (await recording.finish()).duration_s == 1.5


# --- the whole path, SIPp as both parties ------------------------------------------------------


def dial(leg: str, call: str, contact: str) -> DialRequest:
    return DialRequest(leg, call, "acme", contact, "+912241499102", 10.0)


async def bridged_call(
    make_driver: Callable[..., Any],
    sipp: Callable[..., Sipp],
    events: EventLog,
    customer_bye_after_ms: int | None = None,
) -> Any:
    driver = await make_driver(workers=1)
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=50, timeout_s=30)
    if customer_bye_after_ms is None:
        customer = sipp("uas_answer_tone.xml", tone_hz=CUSTOMER_HZ, pause_ms=50, timeout_s=30)
    else:
        customer = sipp(
            "uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=customer_bye_after_ms
        )
    driver.reserve("C1")
    await driver.dial(dial("A", "C1", f"sip:agent@{agent.uri_host}"))
    await driver.dial(dial("B", "C1", f"sip:customer@{customer.uri_host}"))
    for leg in ("A", "B"):
        await events.wait(leg, LegEventKind.ANSWERED)
    await driver.bridge("A", "B")
    return driver


@pytest.mark.sip
async def test_dual_recording_is_encoded_in_the_worker_while_the_call_runs(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await bridged_call(make_driver, sipp, events)
    started = time.monotonic()
    recording = await driver.record("A", "B", RecordingChannels.DUAL, RecordingFormat.MP3)
    await until(lambda: recording.received_s >= 1.0, timeout_s=5)  # MP3 before the end
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    elapsed = time.monotonic() - started
    result = await recording.finish()
    assert result.channels == 2 and result.format is RecordingFormat.MP3
    channels, _, duration_s, (left, right) = decode_mp3(result.mp3_bytes)
    assert channels == 2
    assert abs(result.duration_s - elapsed) <= 0.5
    assert 0 <= duration_s - result.duration_s <= MP3_SLACK_S
    window = slice(int(0.5 * 8000) * 2, int(1.5 * 8000) * 2)
    assert near(dominant_frequency(left[window]), AGENT_HZ)
    assert near(dominant_frequency(right[window]), CUSTOMER_HZ)
    await driver.hangup("A")
    await driver.hangup("B")


@pytest.mark.sip
async def test_a_worker_crash_keeps_the_recording_encoded_so_far(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await bridged_call(make_driver, sipp, events)
    started = time.monotonic()
    recording = await driver.record("A", "B", RecordingChannels.SINGLE, RecordingFormat.MP3)
    await until(lambda: recording.received_s >= 1.5, timeout_s=6)
    [pid] = driver.worker_pids()
    os.kill(pid, signal.SIGKILL)
    await events.wait("A", LegEventKind.HANGUP)
    result = await recording.finish()
    assert 1.5 <= result.duration_s <= time.monotonic() - started
    channels, _, duration_s, (mono,) = decode_mp3(result.mp3_bytes)
    # Without the encoder's final flush the last few hundredths stay in it.
    assert channels == 1 and abs(duration_s - result.duration_s) <= MP3_SLACK_S
    talk = mono[8000:16000]
    assert min(power_at(talk, AGENT_HZ), power_at(talk, CUSTOMER_HZ)) > 20 * power_at(talk, 400)


@pytest.mark.sip
async def test_recording_ends_when_a_party_hangs_up_not_when_it_is_collected(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await bridged_call(make_driver, sipp, events, customer_bye_after_ms=2000)
    started = time.monotonic()
    recording = await driver.record("A", "B", RecordingChannels.DUAL, RecordingFormat.MP3)
    await events.wait("B", LegEventKind.HANGUP)
    talk_s = time.monotonic() - started
    await asyncio.sleep(1.0)  # the engine is slow to collect it: the recording stopped anyway
    result = await recording.finish()
    assert abs(result.duration_s - talk_s) <= 0.5  # not talk_s + 1 s
    await driver.hangup("A")
