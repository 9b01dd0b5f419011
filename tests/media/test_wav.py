"""WAV validation and conversion, and guarded, size-bounded downloads from a real HTTP server."""

from __future__ import annotations

import struct
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from callbridge.media.audio import dominant_frequency, interleave
from callbridge.media.wav import InvalidAudio, fetch_wav, make_wav, parse_wav, wav_to_pcm
from tests.media.support import allow_all, http_server, tone


def test_16_bit_mono_8k_passes_through() -> None:
    pcm = tone(600, 0.5)
    assert wav_to_pcm(make_wav(pcm)) == pcm


def test_8_bit_unsigned_is_widened() -> None:
    pcm16 = memoryview(tone(600, 0.5, amplitude=20000)).cast("h")
    pcm8 = bytes((v >> 8) + 128 for v in pcm16)
    out = wav_to_pcm(make_wav(pcm8, bits=8))
    assert len(out) == 8000
    assert abs(dominant_frequency(out) - 600) < 2
    assert max(memoryview(out).cast("h")) > 19000


def test_stereo_44k_is_downmixed_and_resampled() -> None:
    left = tone(1000, 1.0, rate=44100)
    data = make_wav(interleave(left, left), sample_rate=44100, channels=2)
    info, _ = parse_wav(data)
    assert (info.channels, info.sample_rate, info.bits_per_sample) == (2, 44100, 16)
    out = wav_to_pcm(data)
    assert abs(len(out) // 2 - 8000) <= 10
    assert abs(dominant_frequency(out) - 1000) < 3


@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_common_rates_convert_to_8k(rate: int) -> None:
    out = wav_to_pcm(make_wav(tone(500, 0.5, rate=rate), sample_rate=rate))
    assert abs(len(out) // 2 - 4000) <= 10
    assert abs(dominant_frequency(out) - 500) < 3


def _with_format(tag: int, bits: int, channels: int = 1) -> bytes:
    data = make_wav(bytes(64), channels=channels, bits=bits)
    return data[:20] + struct.pack("<H", tag) + data[22:]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x03" + bytes(100), "not a RIFF/WAVE file"),
        (_with_format(3, 32), "unsupported WAV encoding 0x0003"),
        (_with_format(1, 24), "unsupported sample size 24 bits"),
        (make_wav(bytes(64), channels=6), "unsupported channel count 6"),
        (make_wav(bytes(64), sample_rate=1000), "unsupported sample rate 1000 Hz"),
        (make_wav(b""), "WAV has no audio samples"),
        (make_wav(bytes(64))[:36], "missing data chunk"),
        (b"RIFF\x00\x00\x00\x00WAVE", "missing fmt chunk"),
    ],
)
def test_invalid_wavs_are_rejected_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidAudio, match=message):
        wav_to_pcm(data)


def _endless(handler: BaseHTTPRequestHandler) -> None:
    """Chunked, no Content-Length, far more than any limit (bounded so the test always ends)."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    piece = make_wav(bytes(4000))
    try:
        for _ in range(2000):
            handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        return


async def test_fetch_wav_downloads_and_converts() -> None:
    wav = make_wav(tone(800, 1.0, rate=16000), sample_rate=16000)
    routes = {"/a.wav": (200, wav), "/gone.wav": (404, b""), "/junk": (200, b"<html>")}
    with http_server(routes) as base:  # type: ignore[arg-type]
        async with httpx.AsyncClient() as client:
            pcm = await fetch_wav(
                f"{base}/a.wav", client=client, max_bytes=1 << 20, guard=allow_all
            )
            assert abs(len(pcm) // 2 - 8000) <= 10
            assert abs(dominant_frequency(pcm) - 800) < 3
            with pytest.raises(InvalidAudio, match="HTTP 404"):
                await fetch_wav(
                    f"{base}/gone.wav", client=client, max_bytes=1 << 20, guard=allow_all
                )
            with pytest.raises(InvalidAudio, match="not a RIFF"):
                await fetch_wav(f"{base}/junk", client=client, max_bytes=1 << 20, guard=allow_all)


async def test_fetch_wav_stops_at_max_bytes_declared_or_streamed() -> None:
    routes = {"/big.wav": (200, make_wav(bytes(200_000))), "/endless": _endless}
    with http_server(routes) as base:  # type: ignore[arg-type]
        async with httpx.AsyncClient() as client:
            for path in ("/big.wav", "/endless"):
                with pytest.raises(InvalidAudio, match="larger than 50000 bytes"):
                    await fetch_wav(
                        f"{base}{path}", client=client, max_bytes=50_000, guard=allow_all
                    )


async def test_fetch_wav_asks_the_guard_first_and_never_connects_when_refused() -> None:
    seen: list[str] = []

    async def refuse(url: str) -> None:
        seen.append(url)
        raise PermissionError("private address")

    async with httpx.AsyncClient() as client:
        with pytest.raises(InvalidAudio, match="audio URL not allowed: PermissionError"):
            await fetch_wav("http://127.0.0.1:9/x.wav", client=client, max_bytes=1000, guard=refuse)
        with pytest.raises(InvalidAudio, match="must be http"):
            await fetch_wav("file:///etc/passwd", client=client, max_bytes=1000, guard=allow_all)
    assert seen == ["http://127.0.0.1:9/x.wav"]
