"""Fetch and validate client-supplied WAV audio and convert it to callbridge's 8 kHz mono PCM.

Downloads are guarded (the caller's SSRF check runs first), streamed and cut off at a byte
limit; parsing accepts RIFF/WAVE PCM (8- or 16-bit, mono or stereo, any common rate).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from callbridge.media.audio import downmix, resample
from callbridge.telephony.base import SAMPLE_RATE

UrlGuard = Callable[[str], Awaitable[object]]
"""Raises for URLs that must not be fetched (the SSRF guard); its return value is ignored."""

_FORMAT_PCM = 0x0001
_FORMAT_EXTENSIBLE = 0xFFFE
_MIN_RATE, _MAX_RATE = 4000, 192000
_XOR_HIGH_BIT = bytes(b ^ 0x80 for b in range(256))


class InvalidAudio(Exception):
    """The audio is not a WAV callbridge can play, or could not be fetched; the message says why."""


@dataclass(frozen=True, slots=True)
class WavInfo:
    channels: int
    sample_rate: int
    bits_per_sample: int
    data_bytes: int


def parse_wav(data: bytes) -> tuple[WavInfo, bytes]:
    """Validate a RIFF/WAVE file and return its format and raw sample data."""
    if len(data) < 12 or data[0:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidAudio("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    samples: bytes | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise InvalidAudio("fmt chunk too short")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _FORMAT_EXTENSIBLE and len(body) >= 26:
                (tag,) = struct.unpack_from("<H", body, 24)  # first two bytes of SubFormat GUID
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            samples = body  # a truncated data chunk (streamed writers) keeps what is there
            break
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise InvalidAudio("missing fmt chunk")
    if samples is None:
        raise InvalidAudio("missing data chunk")
    tag, channels, rate, bits = fmt
    if tag != _FORMAT_PCM:
        raise InvalidAudio(f"unsupported WAV encoding 0x{tag:04x}; use PCM 8- or 16-bit")
    if bits not in (8, 16):
        raise InvalidAudio(f"unsupported sample size {bits} bits; use 8 or 16")
    if channels not in (1, 2):
        raise InvalidAudio(f"unsupported channel count {channels}; use mono or stereo")
    if not _MIN_RATE <= rate <= _MAX_RATE:
        raise InvalidAudio(f"unsupported sample rate {rate} Hz")
    block = channels * bits // 8
    samples = samples[: len(samples) - len(samples) % block]
    if not samples:
        raise InvalidAudio("WAV has no audio samples")
    return WavInfo(channels, rate, bits, len(samples)), samples


def wav_to_pcm(data: bytes) -> bytes:
    """A WAV file → 16-bit LE mono 8 kHz PCM (downmixed and resampled as needed)."""
    info, samples = parse_wav(data)
    if info.bits_per_sample == 8:
        # Unsigned 8-bit → signed 16-bit: the byte becomes the high byte with its top bit flipped.
        wide = bytearray(len(samples) * 2)
        wide[1::2] = samples.translate(_XOR_HIGH_BIT)
        samples = bytes(wide)
    if info.channels == 2:
        samples = downmix(samples)
    return resample(samples, info.sample_rate, SAMPLE_RATE)


def make_wav(
    pcm: bytes, *, sample_rate: int = SAMPLE_RATE, channels: int = 1, bits: int = 16
) -> bytes:
    """Wrap raw PCM in a RIFF/WAVE header (tests and fixtures; 8-bit data must be unsigned)."""
    block = channels * bits // 8
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        _FORMAT_PCM,
        channels,
        sample_rate,
        sample_rate * block,
        block,
        bits,
        b"data",
        len(pcm),
    )
    return header + pcm


async def fetch_wav(
    url: str,
    *,
    client: httpx.AsyncClient,
    max_bytes: int,
    guard: UrlGuard,
    timeout_s: float = 10.0,
) -> bytes:
    """Download a WAV from `url` and return it as 8 kHz mono PCM.

    `guard(url)` runs first and raises for disallowed URLs. The body is streamed and the
    download abandoned past `max_bytes`. Redirects are not followed (each hop would need the
    guard). Raises `InvalidAudio` for every failure, with a message that omits credentials."""
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidAudio("audio URL must be http(s)")
    try:
        await guard(url)
    except Exception as exc:
        raise InvalidAudio(f"audio URL not allowed: {type(exc).__name__}") from exc
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("GET", url, follow_redirects=False) as response:
                if response.status_code != 200:
                    raise InvalidAudio(f"audio URL answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if (
                    declared is not None
                    and declared.isascii()
                    and declared.isdigit()
                    and float(declared) > max_bytes
                ):
                    raise InvalidAudio(f"audio larger than {max_bytes} bytes")
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > max_bytes:
                        raise InvalidAudio(f"audio larger than {max_bytes} bytes")
    except TimeoutError as exc:
        raise InvalidAudio("audio download timed out") from exc
    except httpx.HTTPError as exc:
        raise InvalidAudio(f"audio download failed: {type(exc).__name__}") from exc
    return await asyncio.to_thread(wav_to_pcm, bytes(body))
