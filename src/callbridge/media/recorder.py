"""Records a two-party call to MP3: aligns each leg's frames by time and encodes off the event loop.

`dual` puts the agent (left leg) on the left channel and the customer on the right; `single`
mixes both with saturation. Slots with no audio from a leg are silence, so the recording lasts
exactly as long as the recorder ran (the talk time).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

from callbridge.clock import Clock, Timer
from callbridge.domain.options import RecordingChannels, RecordingFormat
from callbridge.media.audio import FRAME_S, FrameAligner, interleave, mix
from callbridge.media.mp3 import Mp3Encoder

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.5
MAX_PENDING_BATCHES = 240
"""Two minutes of audio waiting for the encoder; beyond that batches are dropped and counted."""


@dataclass(frozen=True, slots=True)
class RecordingResult:
    mp3_bytes: bytes
    duration_s: float
    channels: int
    format: RecordingFormat = RecordingFormat.MP3
    dropped_frames: int = 0
    encode_speed_x: float = 0.0
    """How many times faster than real time the MP3 was encoded."""


class CallRecorder:
    """An `AudioConsumer` for two legs; `finish()` returns the encoded recording."""

    def __init__(
        self,
        channels: RecordingChannels,
        fmt: RecordingFormat,
        *,
        clock: Clock,
        left_leg_sid: str,
        right_leg_sid: str,
        executor: Executor | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.channels = channels
        self._clock = clock
        self._legs = (left_leg_sid, right_leg_sid)
        self._aligner = FrameAligner(self._legs, start_s=clock.monotonic())
        self._encoder = Mp3Encoder(2 if channels is RecordingChannels.DUAL else 1, fmt)
        self._executor = executor
        self._flush_interval_s = flush_interval_s
        self._batches: asyncio.Queue[tuple[list[bytes], list[bytes]] | None] = asyncio.Queue()
        self._chunks: list[bytes] = []
        self._dropped_batches = 0
        self._dropped_batch_frames = 0
        self._finished = False
        self._result: RecordingResult | None = None
        self._timer: Timer | None = clock.call_later(flush_interval_s, self._on_flush_timer)
        self._worker = asyncio.get_running_loop().create_task(self._encode_batches())

    def on_audio(self, leg_sid: str, frame: bytes) -> None:
        if not self._finished:
            self._aligner.push(leg_sid, frame)

    def _on_flush_timer(self) -> None:
        if self._finished:
            return
        self._flush(final=False)
        self._timer = self._clock.call_later(self._flush_interval_s, self._on_flush_timer)

    def _flush(self, *, final: bool) -> None:
        pulled = self._aligner.pull(self._clock.monotonic(), final=final)
        left, right = pulled[self._legs[0]], pulled[self._legs[1]]
        if not left:
            return
        if self._batches.qsize() >= MAX_PENDING_BATCHES:
            # The encoder is far behind: drop this slice of audio rather than grow without bound.
            self._dropped_batches += 1
            self._dropped_batch_frames += len(left)
            return
        self._batches.put_nowait((left, right))

    def _render(self, left: list[bytes], right: list[bytes]) -> bytes:
        a, b = b"".join(left), b"".join(right)
        pcm = interleave(a, b) if self.channels is RecordingChannels.DUAL else mix((a, b))
        return self._encoder.encode(pcm)

    async def _encode_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._batches.get()
            if batch is None:
                break
            self._chunks.append(await loop.run_in_executor(self._executor, self._render, *batch))
        self._chunks.append(await loop.run_in_executor(self._executor, self._encoder.flush))

    async def finish(self) -> RecordingResult:
        """Stop taking audio, encode what is left and return the MP3. Idempotent."""
        if self._result is not None:
            return self._result
        if not self._finished:
            self._finished = True
            if self._timer is not None:
                self._timer.cancel()
            self._flush(final=True)
            self._batches.put_nowait(None)
        await asyncio.shield(self._worker)
        frames = self._aligner.emitted_frames - self._dropped_batch_frames
        dropped = self._aligner.dropped_frames + self._dropped_batch_frames
        if self._dropped_batches:
            logger.warning(
                "recording encoder fell behind", extra={"batches": self._dropped_batches}
            )
        self._result = RecordingResult(
            mp3_bytes=b"".join(self._chunks),
            duration_s=round(frames * FRAME_S, 3),
            channels=self._encoder.channels,
            format=self._encoder.format,
            dropped_frames=dropped,
            encode_speed_x=self._encoder.speed_x,
        )
        return self._result

    def abort(self) -> None:
        """Drop everything without encoding (used when the caller gives up waiting)."""
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        self._worker.cancel()
