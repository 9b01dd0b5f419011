"""Recording on the SIP driver: the worker records each party to WAV in pjmedia (no Python per
frame), an encoder thread turns what is on disk into MP3 as it grows, and the API process only
collects the MP3 pieces (`SipRecording`) — 20 ms PCM frames never cross the pipe for a
recording.

`single` is one recorder fed by both parties (the conference bridge mixes them); `dual` is one
recorder per party, interleaved here into stereo (agent left). A recording lasts as long as its
recorders ran: the conference clock writes a frame every 20 ms whether anyone speaks or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, BinaryIO

from callbridge.domain.options import RecordingFormat
from callbridge.media.audio import interleave
from callbridge.media.mp3 import Mp3Encoder
from callbridge.media.recorder import RecordingResult
from callbridge.telephony.base import FRAME_BYTES, FRAME_MS, DriverError

log = logging.getLogger("callbridge.sip.recording")

Emit = Callable[[tuple[Any, ...]], None]


class WavTail:
    """Reads the samples a WAV writer has put on disk so far, a little more on each call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handle: BinaryIO | None = None
        self._pos: int | None = None

    def read(self, *, final: bool) -> bytes:
        """New whole 20 ms frames (with `final`, everything left, padded to a whole frame)."""
        if self._handle is None:
            try:
                self._handle = open(self.path, "rb")  # noqa: SIM115 - kept open between reads
            except FileNotFoundError:
                return b""
        if self._pos is None:
            self._pos = _data_offset(self._handle)
            if self._pos is None:
                return b""
        self._handle.seek(self._pos)
        data = self._handle.read()
        if not final:
            data = data[: len(data) - len(data) % FRAME_BYTES]
        elif len(data) % FRAME_BYTES:
            data += bytes(FRAME_BYTES - len(data) % FRAME_BYTES)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _data_offset(handle: BinaryIO) -> int | None:
    """Where the `data` chunk's samples start, once the RIFF header is on disk."""
    handle.seek(0)
    header = handle.read(256)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(header):
        size = int.from_bytes(header[pos + 4 : pos + 8], "little")
        if header[pos : pos + 4] == b"data":
            return pos + 8
        pos += 8 + size + (size & 1)
    return None


class RecordingJob:
    """One recording: its WAV files (one per channel) and its MP3 encoder."""

    def __init__(self, paths: Sequence[str], fmt: RecordingFormat) -> None:
        self.tails = [WavTail(path) for path in paths]
        self.encoder = Mp3Encoder(len(self.tails), fmt)
        self._pending = [bytearray() for _ in self.tails]
        self.frames = 0

    def pump(self, *, final: bool) -> bytes:
        """Encode what the recorders wrote since the last call; the channels advance together."""
        for pending, tail in zip(self._pending, self.tails, strict=True):
            pending += tail.read(final=final)
        sizes = [len(p) for p in self._pending]
        size = max(sizes) if final else min(sizes)
        if size == 0:
            return self.encoder.flush() if final else b""
        parts = [bytes(p[:size]).ljust(size, b"\x00") for p in self._pending]
        for pending in self._pending:
            del pending[:size]
        self.frames += size // FRAME_BYTES
        pcm = parts[0] if len(parts) == 1 else interleave(parts[0], parts[1])
        out = self.encoder.encode(pcm)
        return out + self.encoder.flush() if final else out

    def close(self) -> None:
        for tail in self.tails:
            tail.close()


class RecordingEncoder:
    """The worker's encoding thread: every `flush_s` it encodes what each recording wrote and
    emits `rec_data`; a finished recording gets its last piece and `rec_done`."""

    def __init__(self, emit: Emit, flush_s: float) -> None:
        self._emit = emit
        self._flush_s = flush_s
        self._jobs: dict[int, RecordingJob] = {}
        self._commands: queue.SimpleQueue[tuple[str, int, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sip-rec", daemon=True)
        self._thread.start()

    def start(self, rec_id: int, paths: Sequence[str], fmt: RecordingFormat) -> None:
        """Called once the recorders exist (their files have a header)."""
        self._commands.put(("start", rec_id, (list(paths), fmt)))

    def finish(self, rec_id: int) -> None:
        """Called once the recorders are destroyed (their files are complete)."""
        self._commands.put(("finish", rec_id, None))

    def stop(self, timeout_s: float = 2.0) -> None:
        """Drop every unfinished recording and end the thread."""
        self._commands.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        next_flush = time.monotonic() + self._flush_s
        while True:
            try:
                command = self._commands.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                next_flush = time.monotonic() + self._flush_s
                for rec_id, job in list(self._jobs.items()):
                    self._pump(rec_id, job, final=False)
                continue
            if command is None:
                break
            op, rec_id, args = command
            if op == "start":
                paths, fmt = args
                try:
                    self._jobs[rec_id] = RecordingJob(paths, fmt)
                except Exception:
                    log.exception("recording %d could not start", rec_id)
                    self._emit(("rec_done", rec_id, 0, 0.0))
            elif op == "finish":
                finished = self._jobs.pop(rec_id, None)
                if finished is not None:
                    self._pump(rec_id, finished, final=True)
                    finished.close()
                    speed = finished.encoder.speed_x
                    self._emit(("rec_done", rec_id, finished.frames, speed))
        for job in self._jobs.values():
            job.close()
        self._jobs.clear()

    def _pump(self, rec_id: int, job: RecordingJob, *, final: bool) -> None:
        try:
            data = job.pump(final=final)
        except Exception:
            log.exception("recording %d encode failed", rec_id)
            return
        if data:
            self._emit(("rec_data", rec_id, data, job.frames))


class SipRecording:
    """The API side of one worker recording (`RecordingHandle`): collects its MP3 pieces;
    `finish()` stops the recorders (unless the worker already did, when a party hung up or
    was hung up) and returns the whole MP3."""

    def __init__(
        self,
        channels: int,
        fmt: RecordingFormat,
        stop: Callable[[], Awaitable[None]],
        *,
        finish_timeout_s: float = 10.0,
    ) -> None:
        self.channels = channels
        self.format = fmt
        self._stop = stop
        self._finish_timeout_s = finish_timeout_s
        self._chunks: list[bytes] = []
        self._frames = 0
        self._done: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self._stopping = False
        self._result: RecordingResult | None = None

    @property
    def received_s(self) -> float:
        """Seconds of the call encoded and received so far."""
        return self._frames * FRAME_MS / 1000

    def on_data(self, mp3: bytes, frames: int) -> None:
        if not self._done.done():
            self._chunks.append(mp3)
            self._frames = frames

    def on_done(self, frames: int, speed_x: float) -> None:
        if not self._done.done():
            self._done.set_result((frames, speed_x))

    def on_lost(self, reason: str) -> None:
        """The worker is gone: keep what arrived (whole MP3 frames, up to its last flush)."""
        if not self._done.done():
            log.warning("recording cut short: %s (%d frames kept)", reason, self._frames)
            self._done.set_result((self._frames, 0.0))

    async def finish(self) -> RecordingResult:
        if self._result is not None:
            return self._result
        if not self._stopping:
            self._stopping = True
            try:
                await self._stop()
            except DriverError as exc:
                self.on_lost(str(exc))
        try:
            async with asyncio.timeout(self._finish_timeout_s):
                frames, speed_x = await asyncio.shield(self._done)
        except TimeoutError:
            self.on_lost("the worker did not finish the recording in time")
            frames, speed_x = self._done.result()
        self._result = RecordingResult(
            mp3_bytes=b"".join(self._chunks),
            duration_s=round(frames * FRAME_MS / 1000, 3),
            channels=self.channels,
            format=self.format,
            encode_speed_x=speed_x,
        )
        return self._result

    def abort(self) -> None:
        """Stop without waiting for the MP3 (the caller gave up on it)."""
        self.on_lost("aborted")
        if not self._stopping:
            self._stopping = True
            task = asyncio.ensure_future(self._stop())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
