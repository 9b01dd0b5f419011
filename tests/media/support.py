"""Media test helpers: MP3 decoding, tones, a WAV HTTP server, a bot and a plane-backed driver."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import miniaudio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from callbridge.media.audio import deinterleave
from callbridge.telephony.base import AudioConsumer, DialRequest, EventSink, Handle
from callbridge.telephony.sim_media import SimMediaPlane


def tone(frequency_hz: float, seconds: float, *, rate: int = 8000, amplitude: int = 12000) -> bytes:
    n = int(seconds * rate)
    return array(
        "h", (int(amplitude * math.sin(2 * math.pi * frequency_hz * i / rate)) for i in range(n))
    ).tobytes()


def power_at(pcm: bytes, frequency_hz: float, rate: int = 8000) -> float:
    """Goertzel power of one frequency, normalised by length (for 'is this tone present')."""
    samples = array("h", pcm)
    coeff = 2 * math.cos(2 * math.pi * frequency_hz / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return math.sqrt(max(0.0, s1 * s1 + s2 * s2 - coeff * s1 * s2)) / max(1, len(samples))


def decode_mp3(data: bytes) -> tuple[int, int, float, list[bytes]]:
    """(channels, native sample rate, duration s, per-channel 8 kHz PCM) of an MP3."""
    info = miniaudio.mp3_get_info(data)
    decoded = miniaudio.decode(
        data,
        output_format=miniaudio.SampleFormat.SIGNED16,
        nchannels=info.nchannels,
        sample_rate=8000,
    )
    pcm = decoded.samples.tobytes()
    channels = [pcm] if info.nchannels == 1 else list(deinterleave(pcm))
    return info.nchannels, info.sample_rate, decoded.num_frames / 8000, channels


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (real time) for network I/O to make `predicate` true."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polling real sockets, no event to wait on)
            await asyncio.sleep(0.005)


async def advance(clock: object, seconds: float, *, step_s: float = 0.02, io: bool = False) -> None:
    """Advance a ManualClock in steps; with `io`, yield briefly to real sockets between steps."""
    from callbridge.clock import ManualClock

    assert isinstance(clock, ManualClock)
    steps = round(seconds / step_s)
    for _ in range(steps):
        await clock.advance(step_s)
        if io:
            await asyncio.sleep(0.001)


@contextmanager
def http_server(
    routes: dict[str, tuple[int, bytes] | Callable[[BaseHTTPRequestHandler], None]],
) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 in a thread; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            if callable(route):
                route(self)
                return
            status, body = route
            self.send_response(status)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def allow_all(url: str) -> None:
    return None


class PlaneDriver:
    """A minimal TelephonyDriver whose media is a SimMediaPlane (legs are raised by the test)."""

    name = "plane"

    def __init__(self, plane: SimMediaPlane) -> None:
        self.plane = plane
        self.played: list[tuple[str, int, bool]] = []

    async def start(self, sink: EventSink) -> None:
        return None

    async def stop(self) -> None:
        self.plane.close()

    def capacity(self) -> int | None:
        return None

    async def dial(self, request: DialRequest) -> None:
        return None

    async def hangup(self, leg_sid: str) -> None:
        self.plane.leg_down(leg_sid)

    async def bridge(self, leg_a: str, leg_b: str) -> None:
        self.plane.bridge(leg_a, leg_b)

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool = False) -> Handle:
        self.played.append((leg_sid, len(pcm), loop))
        return await self.plane.play(leg_sid, pcm, loop=loop)

    async def tap(self, leg_sids: Sequence[str], consumer: AudioConsumer) -> Handle:
        return await self.plane.tap(leg_sids, consumer)


class FrameLog:
    """An AudioConsumer that keeps every frame per leg."""

    def __init__(self) -> None:
        self.frames: dict[str, list[bytes]] = {}

    def on_audio(self, leg_sid: str, frame: bytes) -> None:
        self.frames.setdefault(leg_sid, []).append(frame)

    def pcm(self, leg_sid: str) -> bytes:
        return b"".join(self.frames.get(leg_sid, []))


Settle = Callable[[], Awaitable[None]]


class Bot:
    """A real Exotel-stream bot: a websockets server on 127.0.0.1 that records what it receives."""

    def __init__(self, *, reject_first: int = 0) -> None:
        self.messages: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self.connections: list[ServerConnection] = []
        self._reject_first = reject_first
        self._server: Server | None = None
        self.port = 0

    async def __aenter__(self) -> Bot:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._process_request, compression=None
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.auth_headers.append(request.headers.get("Authorization"))
        if self._reject_first > 0:
            self._reject_first -= 1
            return connection.respond(500, "try again\n")
        return None

    async def _handler(self, connection: ServerConnection) -> None:
        self.connections.append(connection)
        async for raw in connection:
            self.messages.append(json.loads(raw))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == name]

    async def send(self, message: dict[str, object]) -> None:
        await self.connections[-1].send(json.dumps(message))
