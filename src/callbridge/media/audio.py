"""PCM building blocks: synthetic voices, mixing, interleaving, resampling, frame alignment.

All PCM is 16-bit little-endian signed, mono, 8 kHz unless a function says otherwise. The hot
operations use `array`/slice/`map` primitives (C speed), never per-sample Python where avoidable.
"""

from __future__ import annotations

import cmath
import hashlib
import math
import operator
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from functools import lru_cache

from callbridge.telephony.base import FRAME_BYTES, FRAME_MS, SAMPLE_RATE

FRAME_S = FRAME_MS / 1000
SILENCE_FRAME = bytes(FRAME_BYTES)

VOICE_BASE_HZ = 300
VOICE_STEP_HZ = 100
VOICE_BUCKETS = 16
"""Voices are tones at 300, 400, … 1800 Hz: well separated, inside the telephone band."""
VOICE_AMPLITUDE = 6000
VOICE_AM_HZ = 3
"""Syllable-rate amplitude modulation, so a voice sounds (a little) like speech."""
FALLBACK_TONE_HZ = 2400
"""Wait-audio fallback tone: outside every voice bucket, so tests can tell them apart."""

_BIG_ENDIAN = sys.byteorder == "big"


def _to_array(pcm: bytes) -> array[int]:
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) - (len(pcm) % 2)])
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples


def _to_bytes(samples: array[int]) -> bytes:
    if _BIG_ENDIAN:
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def _clamped(values: Iterable[int]) -> array[int]:
    items = list(values)
    if items and (max(items) > 32767 or min(items) < -32768):
        items = [32767 if v > 32767 else -32768 if v < -32768 else v for v in items]
    return array("h", items)


def voice_frequency(contact_uri: str) -> int:
    """The tone frequency (Hz) of the synthetic voice of `contact_uri`; stable across runs."""
    digest = hashlib.sha256(contact_uri.strip().encode()).digest()
    return VOICE_BASE_HZ + VOICE_STEP_HZ * (digest[0] % VOICE_BUCKETS)


@lru_cache(maxsize=64)
def _one_second(frequency_hz: int, amplitude: int, am_hz: int) -> bytes:
    # Integer frequencies repeat exactly every second, so one cached second loops seamlessly.
    samples = array("h")
    for i in range(SAMPLE_RATE):
        t = i / SAMPLE_RATE
        envelope = 1.0 if am_hz == 0 else 0.65 + 0.35 * math.sin(2 * math.pi * am_hz * t)
        samples.append(int(amplitude * envelope * math.sin(2 * math.pi * frequency_hz * t)))
    return _to_bytes(samples)


def _slice_looped(period: bytes, start_sample: int, n_samples: int) -> bytes:
    total = len(period) // 2
    start = start_sample % total
    out = bytearray()
    remaining = n_samples
    while remaining > 0:
        take = min(remaining, total - start)
        out += period[start * 2 : (start + take) * 2]
        remaining -= take
        start = 0
    return bytes(out)


def synth(contact_uri: str, start_sample: int, n_samples: int) -> bytes:
    """`n_samples` of the synthetic voice of `contact_uri`, from sample `start_sample` on."""
    period = _one_second(voice_frequency(contact_uri), VOICE_AMPLITUDE, VOICE_AM_HZ)
    return _slice_looped(period, start_sample, n_samples)


def fallback_tone(duration_s: float = 2.0) -> bytes:
    """A gentle pulsed tone (1 s on, 1 s off per 2 s) played when wait audio cannot be fetched."""
    on = _one_second(FALLBACK_TONE_HZ, 4000, 0)
    pattern = on + bytes(len(on))
    return _slice_looped(pattern, 0, max(1, int(duration_s * SAMPLE_RATE)))


def mix(parts: Sequence[bytes]) -> bytes:
    """Sum equal-length PCM buffers with saturation (shorter ones are padded with silence)."""
    if not parts:
        return b""
    if len(parts) == 1:
        return parts[0]
    length = max(len(p) for p in parts)
    arrays = [_to_array(p.ljust(length, b"\x00")) for p in parts]
    total: Iterable[int] = arrays[0]
    for other in arrays[1:]:
        total = map(operator.add, total, other)
    return _to_bytes(_clamped(total))


def interleave(left: bytes, right: bytes) -> bytes:
    """Two mono s16le buffers → one stereo buffer (left, right); the shorter is padded."""
    length = max(len(left), len(right))
    left, right = left.ljust(length, b"\x00"), right.ljust(length, b"\x00")
    out = bytearray(length * 2)
    out[0::4], out[1::4] = left[0::2], left[1::2]
    out[2::4], out[3::4] = right[0::2], right[1::2]
    return bytes(out)


def deinterleave(stereo: bytes) -> tuple[bytes, bytes]:
    """One stereo s16le buffer → (left, right) mono buffers."""
    stereo = stereo[: len(stereo) - len(stereo) % 4]
    left, right = bytearray(len(stereo) // 2), bytearray(len(stereo) // 2)
    left[0::2], left[1::2] = stereo[0::4], stereo[1::4]
    right[0::2], right[1::2] = stereo[2::4], stereo[3::4]
    return bytes(left), bytes(right)


def downmix(stereo: bytes) -> bytes:
    """Stereo → mono by averaging the channels."""
    left, right = deinterleave(stereo)
    summed = map(operator.add, _to_array(left), _to_array(right))
    return _to_bytes(array("h", map(operator.rshift, summed, [1] * (len(left) // 2))))


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Mono s16le from `from_rate` to `to_rate`: box-filter decimation, linear interpolation."""
    if from_rate == to_rate or not pcm:
        return pcm
    samples = _to_array(pcm)
    if to_rate < from_rate:
        width = math.ceil(from_rate / to_rate)
        if from_rate % to_rate == 0:
            # Average each group of `width` samples: an anti-alias filter and decimator in one.
            n = len(samples) // width
            total: Iterable[int] = samples[0 : n * width : width]
            for k in range(1, width):
                total = map(operator.add, total, samples[k : n * width : width])
            return _to_bytes(array("h", (v // width for v in total)))
        # Moving average of `width` samples as a crude low-pass, then interpolate.
        n = len(samples) - width + 1
        if n > 0:
            acc: Iterable[int] = samples[0:n]
            for k in range(1, width):
                acc = map(operator.add, acc, samples[k : k + n])
            samples = array("h", (v // width for v in acc))
    if to_rate % from_rate == 0 and to_rate > from_rate:
        factor = to_rate // from_rate
        out = array("h", bytes(len(samples) * factor * 2))
        nxt = samples[1:] + samples[-1:]
        for k in range(factor):
            out[k::factor] = array(
                "h",
                ((a * (factor - k) + b * k) // factor for a, b in zip(samples, nxt, strict=True)),
            )
        return _to_bytes(out)
    n_out = int(len(samples) * to_rate / from_rate)
    step = from_rate / to_rate
    last = len(samples) - 1
    result = array("h")
    for i in range(n_out):
        pos = i * step
        j = int(pos)
        frac = pos - j
        a = samples[j]
        b = samples[j + 1] if j < last else a
        result.append(int(a + (b - a) * frac))
    return _to_bytes(result)


def frames(pcm: bytes, *, pad: bool = True) -> list[bytes]:
    """Split PCM into 320-byte frames; the last short one is padded with silence (or dropped)."""
    out = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    if out and len(out[-1]) < FRAME_BYTES:
        if pad:
            out[-1] = out[-1].ljust(FRAME_BYTES, b"\x00")
        else:
            out.pop()
    return out


def rms(pcm: bytes) -> float:
    """Root-mean-square level of s16le PCM (0 for silence)."""
    samples = _to_array(pcm)
    if not samples:
        return 0.0
    return math.sqrt(sum(map(operator.mul, samples, samples)) / len(samples))


def dominant_frequency(pcm: bytes, rate: int = SAMPLE_RATE, *, max_samples: int = 8192) -> float:
    """The strongest frequency (Hz) in s16le mono PCM: Hann-windowed FFT, interpolated peak.

    Uses the first `max_samples` samples (rounded down to a power of two, at least 256)."""
    samples = _to_array(pcm)
    n = 1 << (min(len(samples), max_samples).bit_length() - 1) if samples else 0
    if n < 256:
        raise ValueError("need at least 256 samples to estimate a frequency")
    window = [0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1)) for i in range(n)]
    spectrum = _fft([complex(samples[i] * window[i]) for i in range(n)])
    magnitudes = [abs(c) for c in spectrum[: n // 2]]
    peak = max(range(1, n // 2 - 1), key=magnitudes.__getitem__)
    left, centre, right = (math.log(magnitudes[peak + d] + 1e-9) for d in (-1, 0, 1))
    denominator = left - 2 * centre + right
    offset = 0.0 if denominator == 0 else 0.5 * (left - right) / denominator
    return (peak + offset) * rate / n


def _fft(values: list[complex]) -> list[complex]:
    n = len(values)
    data = values[:]
    j = 0
    for i in range(1, n):  # bit-reversal permutation
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            data[i], data[j] = data[j], data[i]
    size = 2
    while size <= n:
        step = cmath.exp(-2j * math.pi / size)
        half = size // 2
        for start in range(0, n, size):
            w = 1 + 0j
            for k in range(start, start + half):
                t = w * data[k + half]
                data[k + half] = data[k] - t
                data[k] += t
                w *= step
        size *= 2
    return data


class FrameAligner:
    """Lines up per-leg 20 ms frames on one timeline; a leg with no frame for a slot gets silence.

    Output length follows elapsed time (not frames received), so a recording lasts exactly as
    long as it ran. `lag_frames` of jitter are held back until `pull(final=True)`."""

    def __init__(
        self,
        leg_sids: Sequence[str],
        *,
        start_s: float,
        max_backlog_frames: int = 150,
        lag_frames: int = 3,
        dynamic: bool = False,
    ) -> None:
        self._queues: dict[str, deque[bytes]] = {leg: deque() for leg in leg_sids}
        self._start_s = start_s
        self._emitted = 0
        self._max_backlog = max_backlog_frames
        self._lag = lag_frames
        self._dynamic = dynamic
        self.dropped_frames = 0

    @property
    def legs(self) -> list[str]:
        return list(self._queues)

    @property
    def emitted_frames(self) -> int:
        return self._emitted

    def push(self, leg_sid: str, frame: bytes) -> None:
        queue = self._queues.get(leg_sid)
        if queue is None:
            if not self._dynamic:
                return
            queue = self._queues[leg_sid] = deque()
        if len(frame) != FRAME_BYTES:
            frame = frame[:FRAME_BYTES].ljust(FRAME_BYTES, b"\x00")
        if len(queue) >= self._max_backlog:
            queue.popleft()
            self.dropped_frames += 1
        queue.append(frame)

    def pull(self, now_s: float, *, final: bool = False) -> dict[str, list[bytes]]:
        """Frames for every slot that is now due: {leg: [frame per slot]} (equal lengths)."""
        elapsed = (now_s - self._start_s) / FRAME_S
        due = round(elapsed) if final else int(elapsed + 1e-6) - self._lag
        count = max(0, due - self._emitted)
        out: dict[str, list[bytes]] = {}
        for leg, queue in self._queues.items():
            taken = [queue.popleft() if queue else SILENCE_FRAME for _ in range(count)]
            out[leg] = taken
        self._emitted += count
        return out
