"""Synthetic voices and PCM helpers."""

from __future__ import annotations

from callbridge.media.audio import (
    FALLBACK_TONE_HZ,
    SILENCE_FRAME,
    VOICE_BASE_HZ,
    VOICE_BUCKETS,
    VOICE_STEP_HZ,
    FrameAligner,
    deinterleave,
    dominant_frequency,
    fallback_tone,
    frames,
    interleave,
    mix,
    resample,
    rms,
    synth,
    voice_frequency,
)
from tests.media.support import tone


def test_voice_frequency_is_stable_and_in_a_telephone_band_bucket() -> None:
    f = voice_frequency("+919900000001")
    assert f == voice_frequency("+919900000001")
    assert (f - VOICE_BASE_HZ) % VOICE_STEP_HZ == 0
    assert VOICE_BASE_HZ <= f < VOICE_BASE_HZ + VOICE_STEP_HZ * VOICE_BUCKETS
    assert FALLBACK_TONE_HZ not in {voice_frequency(f"+9199{i:08d}") for i in range(200)}


def test_different_numbers_spread_over_many_buckets() -> None:
    buckets = {voice_frequency(f"+9199{i:08d}") for i in range(100)}
    assert len(buckets) >= 12


def test_synth_is_continuous_across_calls_and_has_the_voice_frequency() -> None:
    uri = "+919900000001"
    whole = synth(uri, 0, 16000)
    assert len(whole) == 32000
    assert synth(uri, 0, 7000) + synth(uri, 7000, 9000) == whole
    assert abs(dominant_frequency(whole) - voice_frequency(uri)) < 2
    assert 2000 < rms(whole) < 6000


def test_fallback_tone_is_pulsed_at_its_own_frequency() -> None:
    pcm = fallback_tone(2.0)
    assert len(pcm) == 32000
    assert abs(dominant_frequency(pcm[:16000]) - FALLBACK_TONE_HZ) < 2
    assert rms(pcm[16000:]) == 0


def test_mix_saturates_instead_of_wrapping() -> None:
    loud = tone(500, 0.1, amplitude=30000)
    mixed = mix([loud, loud])
    samples = memoryview(mixed).cast("h")
    assert max(samples) == 32767 and min(samples) == -32768
    assert mix([loud]) == loud
    assert mix([b"", b"\x01\x00"]) == b"\x01\x00"


def test_interleave_round_trips() -> None:
    left, right = tone(400, 0.05), tone(900, 0.05)
    stereo = interleave(left, right)
    assert len(stereo) == 2 * len(left)
    assert deinterleave(stereo) == (left, right)


def test_resample_up_and_down_keeps_pitch_and_length() -> None:
    pcm = tone(700, 1.0)
    for rate in (16000, 24000, 11025):
        up = resample(pcm, 8000, rate)
        assert abs(len(up) // 2 - rate) <= rate // 100
        assert abs(dominant_frequency(up, rate) - 700) < 3
        back = resample(up, rate, 8000)
        assert abs(len(back) // 2 - 8000) <= 80
        assert abs(dominant_frequency(back) - 700) < 3
    wide = tone(1000, 0.5, rate=44100)
    assert abs(dominant_frequency(resample(wide, 44100, 8000)) - 1000) < 3


def test_frames_pads_the_last_frame() -> None:
    assert [len(f) for f in frames(bytes(700))] == [320, 320, 320]
    assert [len(f) for f in frames(bytes(700), pad=False)] == [320, 320]


def test_aligner_fills_missing_frames_with_silence_and_follows_time() -> None:
    aligner = FrameAligner(["a", "b"], start_s=10.0, lag_frames=2)
    voice = b"\x01\x00" * 160
    for _ in range(10):
        aligner.push("a", voice)
    first = aligner.pull(10.2)  # 10 slots elapsed, 2 held back for jitter
    assert len(first["a"]) == len(first["b"]) == 8
    assert first["b"] == [SILENCE_FRAME] * 8
    final = aligner.pull(10.5, final=True)
    assert len(final["a"]) == 17
    assert final["a"][:2] == [voice, voice] and final["a"][2] == SILENCE_FRAME
    assert aligner.emitted_frames == 25


def test_aligner_bounds_backlog() -> None:
    aligner = FrameAligner(["a"], start_s=0.0, max_backlog_frames=5)
    for _ in range(8):
        aligner.push("a", SILENCE_FRAME)
    assert aligner.dropped_frames == 3
