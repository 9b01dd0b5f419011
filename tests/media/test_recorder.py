"""Call recording: time-aligned legs, dual/single layout, exact length, decoded back from MP3."""

from __future__ import annotations

import pytest

from callbridge.clock import ManualClock
from callbridge.domain.options import RecordingChannels, RecordingFormat
from callbridge.media.audio import dominant_frequency, rms, voice_frequency
from callbridge.media.recorder import CallRecorder
from callbridge.telephony.sim_media import SimMediaPlane
from tests.media.support import decode_mp3, power_at, tone

AGENT, CUSTOMER = "+919900000001", "+919812345678"
F_AGENT, F_CUSTOMER = voice_frequency(AGENT), voice_frequency(CUSTOMER)


async def _record(
    clock: ManualClock, channels: RecordingChannels, fmt: RecordingFormat, seconds: float
) -> tuple[float, int, int, float, list[bytes]]:
    plane = SimMediaPlane(clock)
    plane.leg_up("agent", AGENT)
    plane.leg_up("customer", CUSTOMER)
    await clock.advance(0.37)  # the recording starts mid-tick, as at a real bridge
    recorder = CallRecorder(
        channels, fmt, clock=clock, left_leg_sid="agent", right_leg_sid="customer"
    )
    await plane.tap(["agent", "customer"], recorder)
    await clock.advance(seconds)
    result = await recorder.finish()
    assert await recorder.finish() is result
    n, rate, duration, pcm = decode_mp3(result.mp3_bytes)
    assert n == result.channels
    return result.duration_s, n, rate, duration, pcm


@pytest.mark.parametrize("fmt", [RecordingFormat.MP3, RecordingFormat.MP3_HQ])
async def test_dual_recording_has_agent_left_customer_right_and_talk_time_length(
    clock: ManualClock, fmt: RecordingFormat
) -> None:
    duration_s, channels, rate, decoded_s, (left, right) = await _record(
        clock, RecordingChannels.DUAL, fmt, 6.0
    )
    assert duration_s == 6.0
    assert channels == 2
    assert rate == (8000 if fmt is RecordingFormat.MP3 else 16000)
    assert abs(decoded_s - 6.0) < 0.5
    assert abs(dominant_frequency(left[8000:]) - F_AGENT) < 3
    assert abs(dominant_frequency(right[8000:]) - F_CUSTOMER) < 3


async def test_single_recording_mixes_both_parties(clock: ManualClock) -> None:
    duration_s, channels, _, decoded_s, (mono,) = await _record(
        clock, RecordingChannels.SINGLE, RecordingFormat.MP3, 4.0
    )
    assert (duration_s, channels) == (4.0, 1)
    assert abs(decoded_s - 4.0) < 0.5
    body = mono[8000:40000]
    assert (
        abs(dominant_frequency(body) - F_AGENT) < 3
        or abs(dominant_frequency(body) - F_CUSTOMER) < 3
    )
    assert power_at(body, F_AGENT) > 20 * power_at(body, 2700)
    assert power_at(body, F_CUSTOMER) > 20 * power_at(body, 2700)


async def test_missing_frames_become_silence_so_length_is_elapsed_time(clock: ManualClock) -> None:
    recorder = CallRecorder(
        RecordingChannels.DUAL,
        RecordingFormat.MP3,
        clock=clock,
        left_leg_sid="a",
        right_leg_sid="b",
    )
    left, right = tone(700, 0.02), tone(1500, 0.02)
    for slot in range(250):  # 5 s; the left party is silent (no frames at all) for slots 100-199
        if not 100 <= slot < 200:
            recorder.on_audio("a", left)
        recorder.on_audio("b", right)
        recorder.on_audio("stranger", left)  # not one of the recorded legs: ignored
        await clock.advance(0.02)
    result = await recorder.finish()
    assert result.duration_s == 5.0
    _, _, decoded_s, (lpcm, rpcm) = decode_mp3(result.mp3_bytes)
    assert abs(decoded_s - 5.0) < 0.5
    assert rms(lpcm[36800:62400]) < 100  # 2.3-3.9 s: inside the gap, past the MP3 delay
    assert rms(lpcm[1600:12800]) > 3000
    assert abs(dominant_frequency(rpcm[16000:]) - 1500) < 3


async def test_an_immediately_finished_recording_is_empty_but_valid(clock: ManualClock) -> None:
    recorder = CallRecorder(
        RecordingChannels.SINGLE,
        RecordingFormat.MP3,
        clock=clock,
        left_leg_sid="a",
        right_leg_sid="b",
    )
    result = await recorder.finish()
    assert result.duration_s == 0.0
    assert decode_mp3(result.mp3_bytes)[0] == 1
    recorder.on_audio("a", bytes(320))  # after finish: ignored, no error
