"""Per-call media orchestration: wait audio, playback at connect, recording and streaming.

The call engine calls one `CallMediaSession` per call at each step of the call. Nothing here
raises into the engine: media failures are logged and the call goes on (a wait audio that
cannot be fetched becomes a fallback tone; a stream that cannot connect is dropped).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from callbridge.clock import Clock
from callbridge.domain.options import CallOptions, PlaybackTo, StreamBegin
from callbridge.media.audio import fallback_tone
from callbridge.media.recorder import CallRecorder, RecordingResult
from callbridge.media.storage import RecordingStorage
from callbridge.media.stream import StreamSession
from callbridge.media.wav import InvalidAudio, fetch_wav
from callbridge.settings import Settings
from callbridge.telephony.base import (
    Handle,
    RecordingDriver,
    RecordingHandle,
    TelephonyDriver,
)

logger = logging.getLogger(__name__)

UrlGuard = Callable[[str], Awaitable[object]]

_detached: set[asyncio.Task[Any]] = set()


def _detach(coro: Coroutine[Any, Any, None]) -> None:
    """Run a bounded clean-up after the call without making the call wait for it."""
    task = asyncio.get_running_loop().create_task(coro)
    _detached.add(task)
    task.add_done_callback(_detached.discard)


def http_twin(ws_url: str) -> str:
    """`ws(s)://user:pass@host/p?q` → `http(s)://host/p?q`: the URL the http(s) guard checks."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((scheme, netloc, parts.path, parts.query, ""))


@dataclass(frozen=True, slots=True)
class MediaServices:
    """What every call's media needs, built once by the app and shared by all calls."""

    http: httpx.AsyncClient
    url_guard: UrlGuard
    """Raises for an http(s) URL that must not be fetched (SSRF guard)."""
    stream_url_guard: UrlGuard | None = None
    """Raises for a ws(s) URL that must not be dialled; defaults to `url_guard`."""
    storage: RecordingStorage | None = None
    max_download_bytes: int = 10 * 1024 * 1024
    download_timeout_s: float = 10.0
    stream_connect_timeout_s: float = 5.0
    stream_chunk_ms: int = 100
    stream_max_duration_s: float = 3600.0
    finish_timeout_s: float = 15.0
    executor: Executor | None = None
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger
    on_stream: Callable[[StreamSession], None] | None = None
    """Told of every stream session started (metrics)."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        http: httpx.AsyncClient,
        url_guard: UrlGuard,
        stream_url_guard: UrlGuard | None = None,
        storage: RecordingStorage | None = None,
        on_stream: Callable[[StreamSession], None] | None = None,
    ) -> MediaServices:
        return cls(
            http=http,
            url_guard=url_guard,
            stream_url_guard=stream_url_guard,
            storage=storage,
            max_download_bytes=settings.media_max_download_bytes,
            on_stream=on_stream,
        )


class CallMediaSession:
    """The media of one call. Each hook returns quickly; slow work runs in background tasks."""

    def __init__(
        self,
        driver: TelephonyDriver,
        clock: Clock,
        call_sid: str,
        account_sid: str,
        from_uri: str,
        to_uri: str,
        options: CallOptions,
        services: MediaServices,
        *,
        agent_leg: Literal["from", "to"] = "from",
        custom_parameters: Mapping[str, str] | None = None,
    ) -> None:
        self._driver = driver
        self._clock = clock
        self._call_sid = call_sid
        self._account_sid = account_sid
        self._from_uri, self._to_uri = from_uri, to_uri
        self._options = options
        self._services = services
        self._agent_leg = agent_leg
        self._custom = dict(custom_parameters or {})
        self._log = services.log
        self._from_leg: str | None = None
        self._to_leg: str | None = None
        self._bridged = False
        self._finished = False
        self._audio: dict[str, asyncio.Task[bytes | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wait_handle: Handle | None = None
        self._handles: list[Handle] = []
        self._taps: list[Handle] = []
        self._recorders: list[RecordingHandle] = []
        self._stream: StreamSession | None = None

    # -- engine hooks ---------------------------------------------------------------------

    async def from_leg_answered(self, from_leg_sid: str) -> None:
        try:
            self._from_leg = from_leg_sid
            self._prefetch()
            if self._options.wait_audio_url:
                self._spawn(self._play_wait_audio(from_leg_sid, self._options.wait_audio_url))
            streaming = self._options.streaming
            if streaming and streaming.begin is StreamBegin.FROM_LEG_CONNECT:
                await self._start_stream([from_leg_sid])
        except Exception:
            self._log.exception("media: from-leg setup failed", extra=self._extra())

    async def to_leg_ringing(self, to_leg_sid: str) -> None:
        self._to_leg = to_leg_sid
        try:
            self._prefetch()
        except Exception:
            self._log.exception("media: prefetch failed", extra=self._extra())

    async def bridged(self, from_leg_sid: str, to_leg_sid: str) -> None:
        try:
            self._from_leg, self._to_leg = from_leg_sid, to_leg_sid
            self._bridged = True
            self._stop_handle(self._wait_handle)
            self._wait_handle = None
            recording = self._options.recording
            if recording.record:
                left, right = (
                    (from_leg_sid, to_leg_sid)
                    if self._agent_leg == "from"
                    else (to_leg_sid, from_leg_sid)
                )
                await self._start_recording(left, right)
            streaming = self._options.streaming
            if streaming is not None:
                if self._stream is None and streaming.begin is StreamBegin.TO_LEG_CONNECT:
                    await self._start_stream([from_leg_sid, to_leg_sid])
                elif self._stream is not None and not self._stream.done:
                    self._taps.append(await self._driver.tap([to_leg_sid], self._stream))
            if any(p.event == "start" for p in self._options.playback):
                self._spawn(self._play_playbacks(from_leg_sid, to_leg_sid))
        except Exception:
            self._log.exception("media: bridge setup failed", extra=self._extra())

    async def dtmf(self, leg_sid: str, digits: str) -> None:
        if self._stream is not None:
            try:
                self._stream.send_dtmf(digits)
            except Exception:
                self._log.exception("media: dtmf to stream failed", extra=self._extra())

    async def finish(self) -> list[RecordingResult]:
        """Stop all media and return the finished recordings, within `finish_timeout_s`."""
        if self._finished:
            return []
        self._finished = True
        results: list[RecordingResult] = []
        try:
            async with asyncio.timeout(self._services.finish_timeout_s):
                for handle in [self._wait_handle, *self._handles, *self._taps]:
                    self._stop_handle(handle)
                for task in list(self._tasks):
                    task.cancel()
                for audio in self._audio.values():
                    audio.cancel()
                if self._stream is not None:
                    # The bot gets its `stop` in the background: a slow bot never holds up
                    # the call's terminal state (the session bounds its own goodbye).
                    _detach(self._stream.stop("callended", timeout_s=3.0))
                for recorder in self._recorders:
                    results.append(await recorder.finish())
        except TimeoutError:
            self._log.error("media: finish timed out", extra=self._extra())
            for recorder in self._recorders:
                recorder.abort()
        except Exception:
            self._log.exception("media: finish failed", extra=self._extra())
        for result in results:
            self._log.info(
                "recording finished",
                extra=self._extra(
                    duration_s=result.duration_s,
                    channels=result.channels,
                    bytes=len(result.mp3_bytes),
                    encode_speed_x=round(result.encode_speed_x, 1),
                ),
            )
        return results

    # -- helpers --------------------------------------------------------------------------

    def _extra(self, **more: object) -> dict[str, object]:
        return {"call_sid": self._call_sid, **more}

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _stop_handle(handle: Handle | None) -> None:
        if handle is not None:
            try:
                handle.stop()
            except Exception:
                logger.debug("media handle stop failed", exc_info=True)

    def _prefetch(self) -> None:
        """Start downloading every audio file of the call once, so it is ready when needed."""
        urls = [p.url for p in self._options.playback if p.event == "start"]
        if self._options.wait_audio_url and not self._bridged:
            urls.insert(0, self._options.wait_audio_url)
        for url in urls:
            if url not in self._audio and not self._finished:
                self._audio[url] = asyncio.get_running_loop().create_task(self._fetch(url))

    async def _fetch(self, url: str) -> bytes | None:
        try:
            return await fetch_wav(
                url,
                client=self._services.http,
                max_bytes=self._services.max_download_bytes,
                guard=self._services.url_guard,
                timeout_s=self._services.download_timeout_s,
            )
        except InvalidAudio as exc:
            self._log.warning("media: audio unusable", extra=self._extra(reason=str(exc)))
        except Exception:
            self._log.exception("media: audio fetch failed", extra=self._extra())
        return None

    async def _audio_for(self, url: str) -> bytes | None:
        self._prefetch()
        task = self._audio.get(url)
        return None if task is None else await asyncio.shield(task)

    async def _play_wait_audio(self, from_leg_sid: str, url: str) -> None:
        pcm = await self._audio_for(url)
        if pcm is None:
            self._log.warning("media: wait audio replaced by fallback tone", extra=self._extra())
            pcm = fallback_tone()
        if self._bridged or self._finished:
            return
        try:
            handle = await self._driver.play(from_leg_sid, pcm, loop=True)
        except Exception:
            self._log.exception("media: wait audio not played", extra=self._extra())
            return
        if self._bridged or self._finished:
            self._stop_handle(handle)
        else:
            self._wait_handle = handle

    async def _play_playbacks(self, from_leg_sid: str, to_leg_sid: str) -> None:
        for playback in self._options.playback:
            if playback.event != "start":
                continue
            pcm = await self._audio_for(playback.url)
            if pcm is None or self._finished:
                continue
            legs = {
                PlaybackTo.BOTH: [from_leg_sid, to_leg_sid],
                PlaybackTo.CALLER: [from_leg_sid],
                PlaybackTo.CALLEE: [to_leg_sid],
            }[playback.to]
            for leg in legs:
                try:
                    self._handles.append(await self._driver.play(leg, pcm, loop=False))
                except Exception:
                    self._log.exception("media: playback not played", extra=self._extra())

    async def _start_recording(self, left: str, right: str) -> None:
        """In the driver when it records itself (SIP: in its media workers), else from taps."""
        recording = self._options.recording
        if isinstance(self._driver, RecordingDriver):
            self._recorders.append(
                await self._driver.record(left, right, recording.channels, recording.format)
            )
            return
        recorder = CallRecorder(
            recording.channels,
            recording.format,
            clock=self._clock,
            left_leg_sid=left,
            right_leg_sid=right,
            executor=self._services.executor,
        )
        self._recorders.append(recorder)
        self._taps.append(await self._driver.tap([left, right], recorder))

    async def _start_stream(self, leg_sids: list[str]) -> None:
        streaming = self._options.streaming
        if streaming is None or self._stream is not None or self._finished:
            return
        try:
            stream = StreamSession(
                url=streaming.url,
                call_sid=self._call_sid,
                account_sid=self._account_sid,
                from_uri=self._from_uri,
                to_uri=self._to_uri,
                play=self._play_from_bot,
                clock=self._clock,
                resolve=self._stream_addresses,
                custom_parameters=self._custom,
                connect_timeout_s=self._services.stream_connect_timeout_s,
                chunk_ms=self._services.stream_chunk_ms,
                max_duration_s=self._services.stream_max_duration_s,
            )
        except Exception as exc:
            self._log.warning(
                "media: stream not started", extra=self._extra(reason=type(exc).__name__)
            )
            return
        self._stream = stream
        stream.start()
        if self._services.on_stream is not None:
            self._services.on_stream(stream)
        self._taps.append(await self._driver.tap(leg_sids, stream))

    async def _stream_addresses(self) -> Sequence[str]:
        """Run the SSRF guard on the stream URL (in the stream's own task, off the call's path).

        The http(s) guard checks the same host and port rules as for ws(s), so without a
        dedicated stream guard the URL is checked as its http(s) twin, without credentials
        (the guard refuses URLs carrying any; a stream URL may carry Basic credentials)."""
        streaming = self._options.streaming
        assert streaming is not None
        if self._services.stream_url_guard is not None:
            checked = await self._services.stream_url_guard(streaming.url)
        else:
            checked = await self._services.url_guard(http_twin(streaming.url))
        addresses = getattr(checked, "addresses", None)
        if isinstance(addresses, tuple | list) and all(isinstance(a, str) for a in addresses):
            return list(addresses)
        return []

    async def _play_from_bot(self, pcm: bytes) -> Handle:
        """Bot audio goes to the from leg: the caller, who started the stream."""
        if self._from_leg is None:
            raise RuntimeError("no from leg")
        return await self._driver.play(self._from_leg, pcm, loop=False)
