"""Exotel bidirectional stream client: call audio out to a bot over a WebSocket, bot audio back in.

A `StreamSession` is an `AudioConsumer`: taps feed it 20 ms frames, it mixes the legs on one
timeline and sends `media` chunks (multiples of 320 bytes) in Exotel's JSON text frames, field for
field as Exotel publishes them: every number a string, `media_format` `audio/x-raw` 16-bit. Bot
`media` is played into the call in order, `mark` is echoed once the audio queued before it has
played, `clear` drops what has not played yet. Every queue is bounded: a slow or dead bot makes
the session drop (and count) audio, never block the call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from callbridge.clock import Clock, Timer
from callbridge.ids import new_sid
from callbridge.media.audio import FrameAligner, mix, resample
from callbridge.telephony.base import FRAME_BYTES, SAMPLE_RATE, Handle

logger = logging.getLogger(__name__)

PlayFn = Callable[[bytes], Awaitable[Handle]]
"""Plays 8 kHz PCM into the call and returns a handle that stops it."""

ResolveFn = Callable[[], Awaitable[Sequence[str]]]
"""Checks the stream URL (SSRF guard) and returns the addresses it may connect to; raises to
refuse it. Runs in the session's background task, so DNS never delays the call."""

ALLOWED_RATES = (8000, 16000, 24000)
_RATE_TEXTS = {str(rate) for rate in ALLOWED_RATES}
MAX_MARK_NAME = 256
MAX_CUSTOM_PARAMETERS = 16
MAX_CUSTOM_TEXT = 256


class StreamUrlError(ValueError):
    """The stream URL is not a usable ws:// or wss:// URL."""


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """A stream URL split into what is dialled, the credentials and a loggable form."""

    url: str
    authorization: str | None
    sample_rate: int
    redacted: str
    custom_parameters: dict[str, str]
    """The URL's other query parameters, handed to the bot in the `start` message."""

    @classmethod
    def parse(cls, raw: str) -> StreamTarget:
        try:
            parts = urllib.parse.urlsplit(raw)
            port = parts.port  # raises for a port outside 0..65535 or not a number
        except ValueError:
            # `ws://[::1/x` (unclosed bracket) or `ws://h:99999/`: the message never echoes
            # the URL, which may carry credentials.
            raise StreamUrlError("stream URL cannot be parsed (host or port)") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise StreamUrlError("stream URL must be ws:// or wss:// with a host")
        if port == 0:
            raise StreamUrlError("stream URL port is invalid")
        rate = SAMPLE_RATE
        custom: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(parts.query):
            if key == "sample-rate":
                if value not in _RATE_TEXTS:
                    raise StreamUrlError("sample-rate must be 8000, 16000 or 24000")
                rate = int(value)
            elif len(custom) < MAX_CUSTOM_PARAMETERS:
                custom[key[:MAX_CUSTOM_TEXT]] = value[:MAX_CUSTOM_TEXT]
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = f"{host}:{port}" if port else host
        auth = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        redacted = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
        return cls(url, auth, rate, redacted, custom)


class _NoRedirectConnect(connect):
    """A redirect could lead past the URL guard, so it is an error, not a hop."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


@dataclass(slots=True)
class StreamStats:
    connected: bool = False
    connect_attempts: int = 0
    media_sent: int = 0
    bytes_sent: int = 0
    media_dropped: int = 0
    media_received: int = 0
    bytes_played: int = 0
    marks_echoed: int = 0
    bad_messages: int = 0
    playout_dropped_bytes: int = 0
    failure: str | None = None
    stop_reason: str | None = None


@dataclass(frozen=True, slots=True)
class _Mark:
    name: str


class StreamSession:
    """One Exotel stream for one call. `start()` connects in the background; `stop()` ends it."""

    def __init__(
        self,
        *,
        url: str,
        call_sid: str,
        account_sid: str,
        from_uri: str,
        to_uri: str,
        play: PlayFn,
        clock: Clock,
        resolve: ResolveFn | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        stream_sid: str | None = None,
        connect_timeout_s: float = 5.0,
        retry_delay_s: float = 0.5,
        max_duration_s: float = 3600.0,
        chunk_ms: int = 100,
        max_outbound_chunks: int = 50,
        max_playout_s: float = 60.0,
        max_message_bytes: int = 512 * 1024,
        lag_frames: int = 3,
    ) -> None:
        self.target = StreamTarget.parse(url)
        if chunk_ms <= 0 or chunk_ms % 20:
            raise ValueError("chunk_ms must be a positive multiple of 20")
        self.stream_sid = stream_sid or new_sid()
        self.stats = StreamStats()
        self._call_sid, self._account_sid = call_sid, account_sid
        self._from, self._to = from_uri, to_uri
        # The stream URL's own query parameters, then any the caller adds.
        self._custom = {**self.target.custom_parameters, **(custom_parameters or {})}
        self._play = play
        self._clock = clock
        self._resolve = resolve
        self._connect_timeout_s = connect_timeout_s
        self._retry_delay_s = retry_delay_s
        self._max_duration_s = max_duration_s
        self._chunk_s = chunk_ms / 1000
        self._chunk_bytes = chunk_ms // 20 * FRAME_BYTES
        self._max_playout_bytes = int(max_playout_s * SAMPLE_RATE * 2)
        self._max_message_bytes = max_message_bytes
        self._lag_frames = lag_frames
        self._aligner = FrameAligner((), start_s=0.0, lag_frames=lag_frames, dynamic=True)
        self._pending = bytearray()
        self._pending_start_frame = 0
        self._media: deque[tuple[int, bytes]] = deque(maxlen=max_outbound_chunks)
        self._control: deque[dict[str, Any]] = deque(maxlen=1000)
        self._wake = asyncio.Event()
        self._sequence = 0
        self._chunk = 0
        self._playout: deque[bytes | _Mark] = deque()
        self._playout_bytes = 0
        self._playout_wake = asyncio.Event()
        self._playing: Handle | None = None
        self._playing_done: asyncio.Future[None] | None = None
        self._flush_timer: Timer | None = None
        self._cap_timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._stop_reason: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Begin taking audio and connect to the bot in the background."""
        if self._task is not None:
            return
        self._aligner = FrameAligner(
            (), start_s=self._clock.monotonic(), lag_frames=self._lag_frames, dynamic=True
        )
        self._accepting = True
        self._flush_timer = self._clock.call_later(self._chunk_s, self._on_flush_timer)
        self._cap_timer = self._clock.call_later(
            self._max_duration_s, lambda: self._request_stop("stopped")
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def stop(self, reason: str = "stopped", *, timeout_s: float = 5.0) -> None:
        """Send `stop` (reason "callended" or "stopped") and close, within `timeout_s`."""
        self._request_stop(reason)
        if self._task is None:
            return
        finished, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not finished:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)

    def _request_stop(self, reason: str) -> None:
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        self.stats.stop_reason = reason
        self._accepting = False
        for timer in (self._flush_timer, self._cap_timer):
            if timer is not None:
                timer.cancel()
        self._flush(final=True)
        if not self.stats.connected and self._task is not None:
            self._task.cancel()  # still dialling the bot: nothing to say goodbye to
        self._wake.set()

    # -- call audio → bot ---------------------------------------------------------------

    def on_audio(self, leg_sid: str, frame: bytes) -> None:
        if self._accepting:
            self._aligner.push(leg_sid, frame)

    def send_dtmf(self, digits: str) -> None:
        if not self._accepting:
            return
        for digit in digits[:32]:
            self._control.append({"event": "dtmf", "dtmf": {"digit": digit, "duration": "100"}})
        self._wake.set()

    def _on_flush_timer(self) -> None:
        if not self._accepting:
            return
        self._flush(final=False)
        self._flush_timer = self._clock.call_later(self._chunk_s, self._on_flush_timer)

    def _flush(self, *, final: bool) -> None:
        pulled = self._aligner.pull(self._clock.monotonic(), final=final)
        if pulled:
            slots = len(next(iter(pulled.values())))
            if slots:
                self._pending += mix([b"".join(frames) for frames in pulled.values()])
        while len(self._pending) >= self._chunk_bytes or (final and self._pending):
            piece = bytes(self._pending[: self._chunk_bytes])
            del self._pending[: len(piece)]
            self._enqueue_media(piece)

    def _enqueue_media(self, pcm: bytes) -> None:
        timestamp_ms = self._pending_start_frame * 20
        self._pending_start_frame += len(pcm) // FRAME_BYTES
        if len(self._media) == self._media.maxlen:
            self.stats.media_dropped += 1  # the oldest chunk falls off the deque
        self._media.append((timestamp_ms, resample(pcm, SAMPLE_RATE, self.target.sample_rate)))
        self._wake.set()

    # -- the connection -----------------------------------------------------------------

    async def _addresses(self) -> list[str] | None:
        """The checked addresses to dial ([] = the URL's host), or None when refused."""
        if self._resolve is None:
            return []
        try:
            return list(await self._resolve())
        except Exception as exc:
            self.stats.failure = type(exc).__name__
            logger.warning(
                "stream URL refused",
                extra={
                    "call_sid": self._call_sid,
                    "url": self.target.redacted,
                    "error": type(exc).__name__,
                },
            )
            return None

    async def _connect(self) -> ClientConnection | None:
        addresses = await self._addresses()
        if addresses is None:
            return None
        headers = {"Authorization": self.target.authorization} if self.target.authorization else {}
        for attempt in (1, 2):
            self.stats.connect_attempts = attempt
            # Pinned to an address the guard checked (no DNS rebinding); TLS still verifies
            # the URL's host name.
            pinned: dict[str, Any] = {}
            if addresses:
                pinned["host"] = addresses[(attempt - 1) % len(addresses)]
            try:
                return await _NoRedirectConnect(
                    self.target.url,
                    additional_headers=headers,
                    open_timeout=self._connect_timeout_s,
                    max_size=self._max_message_bytes,
                    max_queue=32,
                    compression=None,
                    proxy=None,
                    ping_interval=20,
                    ping_timeout=20,
                    close_timeout=2,
                    **pinned,
                )
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                self.stats.failure = type(exc).__name__
                logger.warning(
                    "stream connect failed",
                    extra={
                        "call_sid": self._call_sid,
                        "url": self.target.redacted,
                        "attempt": attempt,
                        "error": type(exc).__name__,
                    },
                )
                if attempt == 1:
                    await asyncio.sleep(self._retry_delay_s)
        return None

    async def _run(self) -> None:
        ws = await self._connect()
        if ws is None:
            self._accepting = False
            return
        self.stats.connected = True
        self.stats.failure = None
        logger.info(
            "stream connected",
            extra={
                "call_sid": self._call_sid,
                "stream_sid": self.stream_sid,
                "url": self.target.redacted,
            },
        )
        receiver = asyncio.create_task(self._receive(ws))
        playout = asyncio.create_task(self._playout_loop())
        try:
            await ws.send(json.dumps({"event": "connected"}))
            await self._send(ws, "start", {"start": self._start_payload()})
            await self._send_loop(ws, receiver)
        except websockets.exceptions.ConnectionClosed:
            logger.info("stream closed by bot", extra={"call_sid": self._call_sid})
        finally:
            self._accepting = False
            playout.cancel()
            receiver.cancel()
            self._stop_playing()
            with contextlib.suppress(Exception):
                await ws.close()
            await asyncio.gather(playout, receiver, return_exceptions=True)

    def _start_payload(self) -> dict[str, Any]:
        return {
            "stream_sid": self.stream_sid,
            "call_sid": self._call_sid,
            "account_sid": self._account_sid,
            "from": self._from,
            "to": self._to,
            "custom_parameters": self._custom,
            "media_format": {
                "encoding": "audio/x-raw",
                "sample_rate": str(self.target.sample_rate),
                "bit_rate": "16",
            },
        }

    async def _send(self, ws: ClientConnection, event: str, body: dict[str, Any]) -> None:
        self._sequence += 1
        message = {
            "event": event,
            "sequence_number": str(self._sequence),
            "stream_sid": self.stream_sid,
        }
        message.update(body)
        await ws.send(json.dumps(message, separators=(",", ":")))

    async def _send_loop(self, ws: ClientConnection, receiver: asyncio.Task[None]) -> None:
        while True:
            while self._control or self._media:
                if self._control:
                    control = self._control.popleft()
                    event = control.pop("event")
                    await self._send(ws, event, control)
                    continue
                timestamp_ms, pcm = self._media.popleft()
                self._chunk += 1
                payload = base64.b64encode(pcm).decode()
                media = {
                    "chunk": str(self._chunk),
                    "timestamp": str(timestamp_ms),
                    "payload": payload,
                }
                await self._send(ws, "media", {"media": media})
                self.stats.media_sent += 1
                self.stats.bytes_sent += len(pcm)
            if self._stop_reason is not None:
                stop = {"call_sid": self._call_sid, "account_sid": self._account_sid}
                stop["reason"] = self._stop_reason
                await self._send(ws, "stop", {"stop": stop})
                return
            if receiver.done():
                return
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    # -- bot → call -----------------------------------------------------------------------

    async def _receive(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            async for raw in ws:
                try:
                    message = json.loads(raw)
                    if not isinstance(message, dict):
                        raise ValueError("not an object")
                    self._handle_bot_message(message)
                except (ValueError, TypeError, KeyError, binascii.Error):
                    self.stats.bad_messages += 1
        self._wake.set()

    def _handle_bot_message(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "media":
            payload = message["media"]["payload"]
            pcm = base64.b64decode(payload, validate=True)
            pcm = resample(pcm[: len(pcm) - len(pcm) % 2], self.target.sample_rate, SAMPLE_RATE)
            if len(pcm) % FRAME_BYTES:
                pcm += bytes(FRAME_BYTES - len(pcm) % FRAME_BYTES)
            self.stats.media_received += 1
            if self._playout_bytes + len(pcm) > self._max_playout_bytes:
                self.stats.playout_dropped_bytes += len(pcm)
                return
            self._playout.append(pcm)
            self._playout_bytes += len(pcm)
            self._playout_wake.set()
        elif event == "mark":
            name = str(message["mark"]["name"])[:MAX_MARK_NAME]
            self._playout.append(_Mark(name))
            self._playout_wake.set()
        elif event == "clear":
            self._clear()
        else:
            self.stats.bad_messages += 1

    def _clear(self) -> None:
        marks = [item for item in self._playout if isinstance(item, _Mark)]
        self._playout.clear()
        self._playout_bytes = 0
        self._stop_playing()
        for mark in marks:  # pending marks are answered, so a bot never waits for them forever
            self._echo_mark(mark)

    def _echo_mark(self, mark: _Mark) -> None:
        self._control.append({"event": "mark", "mark": {"name": mark.name}})
        self.stats.marks_echoed += 1
        self._wake.set()

    def _stop_playing(self) -> None:
        if self._playing is not None:
            with contextlib.suppress(Exception):
                self._playing.stop()
            self._playing = None
        if self._playing_done is not None and not self._playing_done.done():
            self._playing_done.set_result(None)

    async def _playout_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._playout_wake.wait()
            self._playout_wake.clear()
            while self._playout:
                head = self._playout.popleft()
                if isinstance(head, _Mark):
                    self._echo_mark(head)
                    continue
                pieces = [head]
                while self._playout and isinstance(self._playout[0], bytes):
                    nxt = self._playout.popleft()
                    assert isinstance(nxt, bytes)
                    pieces.append(nxt)
                pcm = b"".join(pieces)
                self._playout_bytes -= len(pcm)
                done: asyncio.Future[None] = loop.create_future()
                self._playing_done = done
                try:
                    handle = await self._play(pcm)
                except Exception:
                    logger.warning("stream audio not played", extra={"call_sid": self._call_sid})
                    continue
                if done.done():  # cleared while the play was being started
                    handle.stop()
                    continue
                self._playing = handle
                self.stats.bytes_played += len(pcm)
                timer = self._clock.call_later(len(pcm) / (2 * SAMPLE_RATE), _resolver(done))
                await done
                timer.cancel()
                self._playing = None


def _resolver(future: asyncio.Future[None]) -> Callable[[], None]:
    def resolve() -> None:
        if not future.done():
            future.set_result(None)

    return resolve
