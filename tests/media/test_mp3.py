"""MP3 encoding over lameenc, decoded back with miniaudio."""

from __future__ import annotations

import pytest

from callbridge.domain.options import RecordingFormat
from callbridge.media.audio import dominant_frequency, interleave
from callbridge.media.mp3 import Mp3Encoder
from tests.media.support import decode_mp3, tone


def _encode(encoder: Mp3Encoder, pcm: bytes, piece: int = 3200) -> bytes:
    out = b"".join(encoder.encode(pcm[i : i + piece]) for i in range(0, len(pcm), piece))
    return out + encoder.flush()


@pytest.mark.parametrize(
    ("fmt", "rate", "kbps"), [(RecordingFormat.MP3, 8000, 32), (RecordingFormat.MP3_HQ, 16000, 64)]
)
def test_mono_encodes_at_the_profile_rate_and_length(
    fmt: RecordingFormat, rate: int, kbps: int
) -> None:
    encoder = Mp3Encoder(1, fmt)
    mp3 = _encode(encoder, tone(440, 4.0))
    channels, native_rate, duration, (pcm,) = decode_mp3(mp3)
    assert (channels, native_rate) == (1, rate)
    assert abs(duration - 4.0) < 0.2
    assert abs(len(mp3) * 8 / 4.0 / 1000 - kbps) < kbps * 0.1
    assert abs(dominant_frequency(pcm[8000:]) - 440) < 3
    assert encoder.encoded_s == 4.0
    assert encoder.speed_x > 20


@pytest.mark.parametrize(
    ("fmt", "kbps"), [(RecordingFormat.MP3, 64), (RecordingFormat.MP3_HQ, 128)]
)
def test_stereo_keeps_one_signal_per_channel(fmt: RecordingFormat, kbps: int) -> None:
    encoder = Mp3Encoder(2, fmt)
    mp3 = _encode(encoder, interleave(tone(500, 3.0), tone(1300, 3.0)))
    channels, _, duration, (left, right) = decode_mp3(mp3)
    assert channels == 2
    assert abs(duration - 3.0) < 0.2
    assert abs(len(mp3) * 8 / 3.0 / 1000 - kbps) < kbps * 0.1
    assert abs(dominant_frequency(left[8000:]) - 500) < 3
    assert abs(dominant_frequency(right[8000:]) - 1300) < 3


def test_encoder_rejects_bad_use() -> None:
    with pytest.raises(ValueError, match="channels"):
        Mp3Encoder(3, RecordingFormat.MP3)
    encoder = Mp3Encoder(1, RecordingFormat.MP3)
    encoder.flush()
    assert encoder.flush() == b""
    with pytest.raises(RuntimeError):
        encoder.encode(b"\x00" * 320)
