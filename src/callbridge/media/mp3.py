"""Incremental MP3 encoding of 8 kHz PCM over `lameenc`, measuring its speed against real time.

`mp3` keeps the 8 kHz rate (MPEG-2.5) at 32 kbps mono / 64 kbps stereo; `mp3-hq` encodes at
16 kHz (MPEG-2) with 64 / 128 kbps, which is as high as LAME's low-rate layers sensibly go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lameenc

from callbridge.domain.options import RecordingFormat
from callbridge.telephony.base import SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class Mp3Profile:
    out_sample_rate: int
    bit_rate_kbps: int
    quality: int
    """LAME's algorithm quality, 2 (best, slow) … 7 (fast)."""


def profile_for(channels: int, fmt: RecordingFormat) -> Mp3Profile:
    if fmt is RecordingFormat.MP3_HQ:
        return Mp3Profile(16000, 64 * channels, 5)
    return Mp3Profile(SAMPLE_RATE, 32 * channels, 7)


class Mp3Encoder:
    """Feed s16le PCM at 8 kHz (interleaved when stereo) with `encode`; end with `flush`.

    Not thread-safe; use it from one thread at a time (the recorder serialises its batches)."""

    def __init__(self, channels: int, fmt: RecordingFormat) -> None:
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        self.channels = channels
        self.format = fmt
        self.profile = profile_for(channels, fmt)
        self._encoder = lameenc.Encoder()
        self._encoder.set_channels(channels)
        self._encoder.set_in_sample_rate(SAMPLE_RATE)
        self._encoder.set_out_sample_rate(self.profile.out_sample_rate)
        self._encoder.set_bit_rate(self.profile.bit_rate_kbps)
        self._encoder.set_quality(self.profile.quality)
        self._input_bytes = 0
        self._cpu_s = 0.0
        self._flushed = False

    def encode(self, pcm: bytes) -> bytes:
        if self._flushed:
            raise RuntimeError("encoder already flushed")
        if not pcm:
            return b""
        started = time.thread_time()
        out = bytes(self._encoder.encode(pcm))
        self._cpu_s += time.thread_time() - started
        self._input_bytes += len(pcm)
        return out

    def flush(self) -> bytes:
        if self._flushed:
            return b""
        started = time.thread_time()
        out = b""
        if self._input_bytes == 0:
            # LAME cannot flush an empty stream; 20 ms of silence keeps the file valid.
            out = bytes(self._encoder.encode(bytes(320 * self.channels)))
        self._flushed = True
        out += bytes(self._encoder.flush())
        self._cpu_s += time.thread_time() - started
        return out

    @property
    def encoded_s(self) -> float:
        """Seconds of audio fed in so far."""
        return self._input_bytes / (2 * self.channels * SAMPLE_RATE)

    @property
    def cpu_s(self) -> float:
        """CPU seconds (of the encoding threads) spent so far."""
        return self._cpu_s

    @property
    def speed_x(self) -> float:
        """Encode speed as a multiple of real time (audio seconds per CPU second)."""
        return self.encoded_s / self._cpu_s if self._cpu_s > 0 else float("inf")
