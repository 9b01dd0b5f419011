"""The simulated carrier's media plane: each party speaks a distinct synthetic voice, on a tick.

One timer per plane drives 20 ms ticks from the injected Clock (a ManualClock makes them
deterministic; the system clock paces real time). A tick only produces audio for legs that
someone taps, so idle legs cost nothing.

Semantics: a tap on a leg delivers, per 20 ms frame, that party's own voice mixed with
everything being played to that party (wait audio, playback, a stream bot's replies). So audio
played into a call is audible in recordings and streams of the leg it was played to. Bridging
does not change what a tap on a leg carries; the plane records it only for `peer_of`.
Tick k carries the audio of the 20 ms ending at `epoch + k * 20 ms`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from callbridge.clock import Clock, Timer
from callbridge.media.audio import FRAME_S, mix, synth
from callbridge.telephony.base import FRAME_BYTES, FRAME_SAMPLES, AudioConsumer, Handle, UnknownLeg

logger = logging.getLogger(__name__)

MAX_CATCH_UP_TICKS = 10
"""A late timer (busy event loop) replays at most 200 ms of ticks; older ones are skipped."""


@dataclass(eq=False, slots=True)
class _Play:
    pcm: bytes
    loop: bool
    start_tick: int
    n_frames: int

    def frame(self, tick: int) -> bytes | None:
        index = tick - self.start_tick
        if index < 0:
            return None
        if self.loop:
            index %= self.n_frames
        elif index >= self.n_frames:
            return None
        return self.pcm[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]

    def done(self, tick: int) -> bool:
        return not self.loop and tick - self.start_tick >= self.n_frames


@dataclass(eq=False, slots=True)
class _Leg:
    contact_uri: str
    up_tick: int
    plays: list[_Play] = field(default_factory=list)
    peer: str | None = None


@dataclass(eq=False, slots=True)
class _Tap:
    leg_sids: tuple[str, ...]
    consumer: AudioConsumer
    failed: bool = False


class _PlayHandle:
    def __init__(self, plane: SimMediaPlane, leg_sid: str, play: _Play) -> None:
        self._plane, self._leg_sid, self._play = plane, leg_sid, play

    def stop(self) -> None:
        self._plane._stop_play(self._leg_sid, self._play)


class _TapHandle:
    def __init__(self, plane: SimMediaPlane, tap_id: int) -> None:
        self._plane, self._tap_id = plane, tap_id

    def stop(self) -> None:
        self._plane._stop_tap(self._tap_id)


class SimMediaPlane:
    """Synthetic audio for simulated legs: `leg_up`/`leg_down`, `bridge`, `play`, `tap`."""

    def __init__(self, clock: Clock, *, frames_per_tick: int = 1) -> None:
        self._clock = clock
        self._epoch = clock.monotonic()
        self._period_s = FRAME_S * max(1, frames_per_tick)
        self._legs: dict[str, _Leg] = {}
        self._taps: dict[int, _Tap] = {}
        self._tap_ids = itertools.count(1)
        self._timer: Timer | None = None
        self._next_tick = self._tick_now() + 1
        self.ticks = 0
        self.frames_delivered = 0
        self.ticks_skipped = 0

    # -- legs ---------------------------------------------------------------------------

    def leg_up(self, leg_sid: str, contact_uri: str) -> None:
        """The party on `leg_sid` answered and starts speaking its synthetic voice."""
        self._legs[leg_sid] = _Leg(contact_uri, self._upcoming_tick())

    def leg_down(self, leg_sid: str) -> None:
        leg = self._legs.pop(leg_sid, None)
        if leg is not None and leg.peer is not None and leg.peer in self._legs:
            self._legs[leg.peer].peer = None

    def bridge(self, a: str, b: str) -> None:
        for leg_sid in (a, b):
            if leg_sid not in self._legs:
                raise UnknownLeg(leg_sid)
        self._legs[a].peer, self._legs[b].peer = b, a

    def peer_of(self, leg_sid: str) -> str | None:
        leg = self._legs.get(leg_sid)
        return leg.peer if leg else None

    def is_up(self, leg_sid: str) -> bool:
        return leg_sid in self._legs

    # -- audio --------------------------------------------------------------------------

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool) -> Handle:
        """Play `pcm` (8 kHz s16le) to the party on `leg_sid` from the next tick on."""
        leg = self._legs.get(leg_sid)
        if leg is None:
            raise UnknownLeg(leg_sid)
        if len(pcm) % FRAME_BYTES:
            pcm = pcm + bytes(FRAME_BYTES - len(pcm) % FRAME_BYTES)
        tick = self._upcoming_tick()
        leg.plays = [p for p in leg.plays if not p.done(tick)]
        play = _Play(pcm, loop, tick, len(pcm) // FRAME_BYTES)
        if play.n_frames:
            leg.plays.append(play)
        return _PlayHandle(self, leg_sid, play)

    async def tap(self, leg_sids: Sequence[str], consumer: AudioConsumer) -> Handle:
        """Deliver each listed leg's audio (voice + what is played to it) to `consumer`."""
        tap_id = next(self._tap_ids)
        self._taps[tap_id] = _Tap(tuple(leg_sids), consumer)
        self._ensure_timer()
        return _TapHandle(self, tap_id)

    def _stop_play(self, leg_sid: str, play: _Play) -> None:
        leg = self._legs.get(leg_sid)
        if leg is not None and play in leg.plays:
            leg.plays.remove(play)

    def _stop_tap(self, tap_id: int) -> None:
        self._taps.pop(tap_id, None)
        if not self._taps and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Stop the tick timer and forget every leg and tap."""
        self._taps.clear()
        self._legs.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- ticking ------------------------------------------------------------------------

    def _tick_now(self) -> int:
        return int((self._clock.monotonic() - self._epoch) / FRAME_S + 1e-6)

    def _upcoming_tick(self) -> int:
        return self._next_tick if self._timer is not None else self._tick_now() + 1

    def _ensure_timer(self) -> None:
        if self._timer is None:
            self._next_tick = self._tick_now() + 1
            self._schedule()

    def _schedule(self) -> None:
        due_s = self._epoch + self._next_tick * FRAME_S + self._period_s - FRAME_S
        self._timer = self._clock.call_later(due_s - self._clock.monotonic(), self._on_timer)

    def _on_timer(self) -> None:
        now_tick = self._tick_now()
        if now_tick - self._next_tick >= MAX_CATCH_UP_TICKS:
            skipped = now_tick - self._next_tick - MAX_CATCH_UP_TICKS + 1
            self.ticks_skipped += skipped
            self._next_tick += skipped
        while self._next_tick <= now_tick:
            self._run_tick(self._next_tick)
            self._next_tick += 1
        if self._taps:
            self._schedule()
        else:
            self._timer = None

    def _run_tick(self, tick: int) -> None:
        self.ticks += 1
        frames: dict[str, bytes] = {}
        for tap in list(self._taps.values()):
            for leg_sid in tap.leg_sids:
                frame = frames.get(leg_sid)
                if frame is None:
                    leg = self._legs.get(leg_sid)
                    if leg is None or tick < leg.up_tick:
                        continue
                    frame = frames[leg_sid] = self._frame(leg, tick)
                try:
                    tap.consumer.on_audio(leg_sid, frame)
                except Exception:
                    if not tap.failed:
                        tap.failed = True
                        logger.exception("audio consumer failed", extra={"leg": leg_sid})
                self.frames_delivered += 1

    def _frame(self, leg: _Leg, tick: int) -> bytes:
        voice = synth(leg.contact_uri, (tick - leg.up_tick) * FRAME_SAMPLES, FRAME_SAMPLES)
        if not leg.plays:
            return voice
        parts = [voice]
        for play in leg.plays:
            piece = play.frame(tick)
            if piece is not None:
                parts.append(piece)
        if len(parts) > 1:
            leg.plays = [p for p in leg.plays if not p.done(tick + 1)]
            return mix(parts)
        return voice
