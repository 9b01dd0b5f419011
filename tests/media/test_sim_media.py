"""The simulated carrier's media plane, driven by a ManualClock."""

from __future__ import annotations

import pytest

from callbridge.clock import ManualClock
from callbridge.media.audio import dominant_frequency, voice_frequency
from callbridge.telephony.base import UnknownLeg
from callbridge.telephony.sim_media import SimMediaPlane
from tests.media.support import FrameLog, power_at, tone

AGENT, CUSTOMER = "+919900000001", "+919812345678"


def test_voices_differ() -> None:
    assert voice_frequency(AGENT) != voice_frequency(CUSTOMER)


async def test_tap_delivers_one_frame_per_20ms_per_leg_with_each_partys_voice(
    clock: ManualClock,
) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    plane.leg_up("L2", CUSTOMER)
    plane.bridge("L1", "L2")
    log = FrameLog()
    handle = await plane.tap(["L1", "L2"], log)
    await clock.advance(2.0)
    assert len(log.frames["L1"]) == len(log.frames["L2"]) == 100
    assert all(len(f) == 320 for f in log.frames["L1"])
    assert abs(dominant_frequency(log.pcm("L1")) - voice_frequency(AGENT)) < 2
    assert abs(dominant_frequency(log.pcm("L2")) - voice_frequency(CUSTOMER)) < 2
    assert plane.peer_of("L1") == "L2"
    handle.stop()
    await clock.advance(1.0)
    assert len(log.frames["L1"]) == 100
    assert clock.next_due() is None  # nobody taps: no timer runs


async def test_nothing_runs_for_untapped_legs(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    await plane.play("L1", tone(1000, 1.0), loop=True)
    assert clock.next_due() is None
    await clock.advance(5.0)
    assert plane.ticks == 0


async def test_played_audio_is_heard_in_that_legs_tap_until_it_ends(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    log = FrameLog()
    await plane.tap(["L1"], log)
    await clock.advance(0.2)
    await plane.play("L1", tone(2000, 0.5, amplitude=16000), loop=False)
    await clock.advance(1.0)
    pcm = log.pcm("L1")
    before, during, after = pcm[: 10 * 320], pcm[10 * 320 : 35 * 320], pcm[35 * 320 :]
    assert power_at(during, 2000) > 10 * power_at(before, 2000)
    assert power_at(after, 2000) < power_at(during, 2000) / 10
    assert abs(dominant_frequency(during) - 2000) < 3


async def test_looped_play_continues_and_stops_on_handle(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    log = FrameLog()
    await plane.tap(["L1"], log)
    handle = await plane.play("L1", tone(2000, 0.1, amplitude=16000), loop=True)
    await clock.advance(1.0)
    handle.stop()
    await clock.advance(1.0)
    pcm = log.pcm("L1")
    assert power_at(pcm[40 * 320 : 50 * 320], 2000) > 10 * power_at(pcm[60 * 320 :], 2000)


async def test_leg_down_stops_its_frames_and_play_on_unknown_leg_fails(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    plane.leg_up("L1", AGENT)
    log = FrameLog()
    await plane.tap(["L1", "L2"], log)
    await clock.advance(0.4)
    plane.leg_up("L2", CUSTOMER)
    await clock.advance(0.4)
    plane.leg_down("L1")
    await clock.advance(0.4)
    assert len(log.frames["L1"]) == 40
    assert len(log.frames["L2"]) == 40
    with pytest.raises(UnknownLeg):
        await plane.play("L1", b"\x00" * 320, loop=False)


async def test_batched_ticks_deliver_the_same_frames(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock, frames_per_tick=5)
    plane.leg_up("L1", AGENT)
    log = FrameLog()
    await plane.tap(["L1"], log)
    await clock.advance(1.0)
    assert len(log.frames["L1"]) == 50
    assert plane.ticks == 50


async def test_two_hundred_tapped_calls_tick_cheaply(clock: ManualClock) -> None:
    plane = SimMediaPlane(clock)
    log = FrameLog()
    for i in range(200):
        plane.leg_up(f"a{i}", f"+9199{i:08d}")
        plane.leg_up(f"b{i}", f"+9188{i:08d}")
        await plane.tap([f"a{i}", f"b{i}"], log)
    await clock.advance(1.0)
    assert plane.frames_delivered == 200 * 2 * 50
