"""A SIP worker's media: what each leg's audio port is connected to — the other party (bridge),
players, stream taps and recorders — and remaking those connections when pjsua rebuilds a
call's audio stream. Runs on the worker's pj thread, except `TapPort.onFrameReceived`, which
the conference clock thread calls and which only copies bytes into the outgoing queue.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pjsua2 as pj

from callbridge.domain.options import RecordingChannels, RecordingFormat
from callbridge.telephony.sip_recording import RecordingEncoder

log = logging.getLogger("callbridge.sip.worker")

Event = tuple[Any, ...]
Outbox = queue.SimpleQueue[Event | None]


@dataclass(eq=False)
class WorkerLeg:
    """One call leg in a worker: its pjsua2 call and what is attached to its audio."""

    leg_sid: str
    incoming: bool
    call: Any
    """The pjsua2 `Call`; None once DISCONNECTED (its slot may be reused at once)."""
    ring_deadline: float | None = None
    rang: bool = False
    answered: bool = False
    ended_by_us: bool = False
    outcome_sent: bool = False
    media: Any = None
    peer: str | None = None
    """The leg this one is bridged to."""
    plays: set[int] = field(default_factory=set)
    taps: set[int] = field(default_factory=set)
    recs: set[int] = field(default_factory=set)


@dataclass(eq=False)
class _Play:
    leg_sid: str
    player: Any
    path: str


@dataclass(eq=False)
class _Tap:
    ports: dict[str, Any]


@dataclass(eq=False)
class _Recording:
    feeds: dict[str, list[Any]]
    """Which recorders each leg's audio goes to."""
    recorders: list[Any]


def vector_copier() -> Callable[[Any], bytes]:
    """A fast copy of a pjsua2 `ByteVector` (std::vector<unsigned char>): read its begin/end
    pointers with ctypes instead of iterating in Python (1.5 µs instead of ~150 µs). Verified
    against `bytes()` on a known vector; falls back to `bytes()` if the layout differs."""

    def fast(vector: Any) -> bytes:
        addr = int(vector.this)
        begin = ctypes.c_size_t.from_address(addr).value
        end = ctypes.c_size_t.from_address(addr + ctypes.sizeof(ctypes.c_size_t)).value
        size = end - begin
        if size <= 0 or size > 65536:
            return b""
        return ctypes.string_at(begin, size)

    probe = bytes(range(256)) + bytes(range(64))
    try:
        if fast(pj.ByteVector(probe)) == probe:
            return fast
    except Exception:
        log.warning("fast frame copy unavailable; using bytes()")
    return bytes


class TapPort(pj.AudioMediaPort):  # type: ignore[misc]
    """Receives one party's frames on the conference clock thread; copies and hands off only."""

    def __init__(
        self, out: Outbox, tap_id: int, leg_sid: str, copy: Callable[[Any], bytes]
    ) -> None:
        super().__init__()
        self._out = out
        self._tap_id = tap_id
        self._leg_sid = leg_sid
        self._copy = copy

    def onFrameReceived(self, frame: Any) -> None:
        try:
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
                data = self._copy(frame.buf)
                if data:
                    self._out.put(("audio", self._tap_id, self._leg_sid, data))
        except Exception:
            log.exception("tap frame failed")


def destroy(obj: Any) -> None:
    """Destroy a player/port/recorder explicitly on the pj thread, as the notes require."""
    if obj is None:
        return
    try:
        type(obj).__swig_destroy__(obj)
    except Exception:
        log.exception("destroying %s failed", type(obj).__name__)


class WorkerMedia:
    """Players, taps and recorders of one worker, by id, and their legs' connections."""

    def __init__(
        self, legs: dict[str, WorkerLeg], out: Outbox, media_dir: str, recording_flush_s: float
    ) -> None:
        self._legs = legs
        self._out = out
        self._dir = media_dir
        self._copy = vector_copier()
        self.plays: dict[int, _Play] = {}
        self.taps: dict[int, _Tap] = {}
        self.recordings: dict[int, _Recording] = {}
        self.encoder = RecordingEncoder(out.put, recording_flush_s)

    def leg(self, leg_sid: str) -> WorkerLeg:
        leg = self._legs.get(leg_sid)
        if leg is None or leg.call is None:
            raise KeyError(f"unknown leg {leg_sid}")
        return leg

    @staticmethod
    def audio(leg: WorkerLeg) -> Any:
        if leg.media is None:
            raise RuntimeError(f"leg {leg.leg_sid} has no active audio")
        return leg.media

    # --- connections -------------------------------------------------------------------------

    def bridge(self, leg_a: str, leg_b: str) -> None:
        a, b = self.leg(leg_a), self.leg(leg_b)
        media_a, media_b = self.audio(a), self.audio(b)
        for play_id in list(a.plays | b.plays):
            self.stop_play(play_id)
        media_a.startTransmit(media_b)
        media_b.startTransmit(media_a)
        a.peer, b.peer = b.leg_sid, a.leg_sid

    def reconnect(self, leg: WorkerLeg) -> None:
        """(Re)make every connection of a leg's audio port; connecting twice is harmless."""
        media = leg.media
        peer = self._legs.get(leg.peer) if leg.peer else None
        links: list[tuple[Any, Any]] = []
        if peer is not None and peer.media is not None:
            links += [(media, peer.media), (peer.media, media)]
        links += [(self.plays[p].player, media) for p in leg.plays if p in self.plays]
        for tap_id in leg.taps:
            tap = self.taps.get(tap_id)
            port = tap.ports.get(leg.leg_sid) if tap is not None else None
            if port is not None:
                links.append((media, port))
        for rec_id in leg.recs:
            recording = self.recordings.get(rec_id)
            if recording is not None:
                links += [(media, r) for r in recording.feeds.get(leg.leg_sid, [])]
        for source, sink in links:
            try:
                source.startTransmit(sink)
            except pj.Error as exc:
                log.warning("reconnect leg=%s failed: %s", leg.leg_sid, exc.info())

    def end_recordings(self, leg: WorkerLeg) -> None:
        """A party is gone or being hung up: the conversation is over, so are its recordings
        (their length is the talk time, not the talk time plus the hang-up round trips)."""
        for rec_id in list(leg.recs):
            self.stop_record(rec_id)

    def leg_ended(self, leg: WorkerLeg) -> None:
        """Release what served this leg: its recordings end, its players and taps go."""
        self.end_recordings(leg)
        for play_id in list(leg.plays):
            self.stop_play(play_id)
        for tap_id in list(leg.taps):
            tap = self.taps.get(tap_id)
            port = tap.ports.pop(leg.leg_sid, None) if tap else None
            destroy(port)
        leg.media = None

    # --- players -----------------------------------------------------------------------------

    def play(self, play_id: int, leg_sid: str, pcm: bytes, loop: bool) -> None:
        leg = self.leg(leg_sid)
        media = self.audio(leg)
        path = os.path.join(self._dir, f"play-{play_id}.wav")
        with wave.open(path, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(8000)
            wav.writeframes(pcm)
        player = pj.AudioMediaPlayer()
        try:
            player.createPlayer(path, 0 if loop else pj.PJMEDIA_FILE_NO_LOOP)
            player.startTransmit(media)
        except Exception:
            destroy(player)
            os.unlink(path)
            raise
        self.plays[play_id] = _Play(leg_sid, player, path)
        leg.plays.add(play_id)

    def stop_play(self, play_id: int) -> None:
        play = self.plays.pop(play_id, None)
        if play is None:
            return
        leg = self._legs.get(play.leg_sid)
        if leg is not None:
            leg.plays.discard(play_id)
        destroy(play.player)
        play.player = None
        with contextlib.suppress(OSError):
            os.unlink(play.path)

    # --- taps (stream audio to the API process) ------------------------------------------------

    def tap(self, tap_id: int, leg_sids: list[str]) -> None:
        legs = [self.leg(sid) for sid in leg_sids]
        medias = [self.audio(leg) for leg in legs]
        tap = _Tap(ports={})
        self.taps[tap_id] = tap
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, 8000, 1, 20000, 16)
        for leg, media in zip(legs, medias, strict=True):
            port = TapPort(self._out, tap_id, leg.leg_sid, self._copy)
            port.createPort(f"tap{tap_id}-{leg.leg_sid[:8]}", fmt)
            media.startTransmit(port)
            tap.ports[leg.leg_sid] = port
            leg.taps.add(tap_id)

    def stop_tap(self, tap_id: int) -> None:
        tap = self.taps.pop(tap_id, None)
        if tap is None:
            return
        for leg_sid, port in tap.ports.items():
            leg = self._legs.get(leg_sid)
            if leg is not None:
                leg.taps.discard(tap_id)
            destroy(port)
        tap.ports.clear()

    # --- recordings (WAV in pjmedia, MP3 in the encoder thread) --------------------------------

    def record(self, rec_id: int, left: str, right: str, channels: str, fmt: str) -> None:
        legs = [self.leg(left), self.leg(right)]
        medias = [self.audio(leg) for leg in legs]
        dual = RecordingChannels(channels) is RecordingChannels.DUAL
        names = ["L", "R"] if dual else ["M"]
        paths = [os.path.join(self._dir, f"rec-{rec_id}-{name}.wav") for name in names]
        recorders: list[Any] = []
        try:
            for path in paths:
                recorder = pj.AudioMediaRecorder()
                recorders.append(recorder)
                recorder.createRecorder(path)
            feeds = {
                leg.leg_sid: [recorders[index if dual else 0]] for index, leg in enumerate(legs)
            }
            for leg, media in zip(legs, medias, strict=True):
                for recorder in feeds[leg.leg_sid]:
                    media.startTransmit(recorder)
        except Exception:
            for recorder in recorders:
                destroy(recorder)
            for path in paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        self.recordings[rec_id] = _Recording(feeds, recorders)
        for leg in legs:
            leg.recs.add(rec_id)
        self.encoder.start(rec_id, paths, RecordingFormat(fmt))

    def stop_record(self, rec_id: int) -> None:
        recording = self.recordings.pop(rec_id, None)
        if recording is None:
            return
        for leg_sid in recording.feeds:
            leg = self._legs.get(leg_sid)
            if leg is not None:
                leg.recs.discard(rec_id)
        # Destroying a recorder closes its file with the last samples and the final header.
        for recorder in recording.recorders:
            destroy(recorder)
        recording.recorders.clear()
        recording.feeds.clear()
        self.encoder.finish(rec_id)

    # --- shutdown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Finish recordings, destroy every player and port (on the pj thread)."""
        for rec_id in list(self.recordings):
            self.stop_record(rec_id)
        for play_id in list(self.plays):
            self.stop_play(play_id)
        for tap_id in list(self.taps):
            self.stop_tap(tap_id)
        self.encoder.stop()
