"""The TelephonyDriver protocol the engine speaks, its leg-event types and the DriverError tree.

A driver places and tears down call legs, bridges them and moves audio. It reports what
happens to a leg as `LegEvent`s through the sink given to `start`. Legs are named by the
engine's leg sid; a driver never invents call state of its own.

Audio everywhere in callbridge is 16-bit little-endian signed PCM, mono, 8000 Hz, in 20 ms
frames of 320 bytes (`FRAME_BYTES`), unless a function says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from callbridge.domain.options import RecordingChannels, RecordingFormat
    from callbridge.media.recorder import RecordingResult

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2


class LegEventKind(StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    REJECTED = "rejected"
    FAILED = "failed"
    HANGUP = "hangup"
    DTMF = "dtmf"


@dataclass(frozen=True, slots=True)
class LegEvent:
    leg_sid: str
    kind: LegEventKind
    at: float
    """Monotonic time of the event, from the driver's clock."""
    digits: str | None = None
    reason: str | None = None


EventSink = Callable[[LegEvent], None]


@dataclass(frozen=True, slots=True)
class DialRequest:
    leg_sid: str
    call_sid: str
    account_sid: str
    contact_uri: str
    caller_id: str
    ring_timeout_s: float
    """The engine enforces this with its own timer; a driver may use it as a hint."""


class AudioConsumer(Protocol):
    """Receives each party's audio as it is spoken: 20 ms frames, per leg."""

    def on_audio(self, leg_sid: str, frame: bytes) -> None: ...


class Handle(Protocol):
    def stop(self) -> None: ...


@runtime_checkable
class TelephonyDriver(Protocol):
    name: str

    async def start(self, sink: EventSink) -> None:
        """Begin delivering leg events to `sink` (called on the event loop)."""

    async def stop(self) -> None:
        """Hang up everything and release resources."""

    def capacity(self) -> int | None:
        """How many more legs this driver can take now, or None when unbounded."""

    async def dial(self, request: DialRequest) -> None:
        """Start ringing a leg. Failures arrive as `FAILED` events, not exceptions, except
        `DriverError` when the driver itself cannot take the leg (capacity, shutdown)."""

    async def hangup(self, leg_sid: str) -> None:
        """End a leg whatever its state (CANCEL while ringing, BYE when answered). Idempotent;
        no `HANGUP` event is reported for a hang-up the engine asked for."""

    async def bridge(self, leg_a: str, leg_b: str) -> None:
        """Connect the two legs' audio both ways."""

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool = False) -> Handle:
        """Play PCM to the party on `leg_sid`; `Handle.stop()` ends it early."""

    async def tap(self, leg_sids: Sequence[str], consumer: AudioConsumer) -> Handle:
        """Deliver what each listed party says to `consumer`, frame by frame, until stopped."""


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A call arriving at one of our numbers; the driver already named its leg."""

    leg_sid: str
    from_uri: str
    to_uri: str


IncomingHandler = Callable[[IncomingCall], None]


@runtime_checkable
class InboundCapable(Protocol):
    """A driver that can receive calls: it reports them to the handler, and the engine then
    answers the leg (or ends it with `hangup`)."""

    def set_incoming_handler(self, handler: IncomingHandler) -> None: ...

    async def answer(self, leg_sid: str) -> None: ...


class RecordingHandle(Protocol):
    async def finish(self) -> RecordingResult:
        """Stop recording and return the encoded file (its length is the time it ran)."""

    def abort(self) -> None:
        """Stop and drop the recording without waiting for it."""


@runtime_checkable
class RecordingDriver(Protocol):
    """A driver that records and encodes calls itself (the SIP driver does it in its media
    workers); the engine records through `tap` and an in-process encoder otherwise."""

    async def record(
        self,
        left_leg_sid: str,
        right_leg_sid: str,
        channels: RecordingChannels,
        fmt: RecordingFormat,
    ) -> RecordingHandle:
        """Record the two parties (`dual`: left leg on the left channel) from now on."""


@runtime_checkable
class CapacityReserving(Protocol):
    """A driver with a fixed number of call slots: a call reserves room for its legs before it
    is admitted, so a full driver refuses the request instead of failing the call later."""

    def reserve(self, call_sid: str) -> None:
        """Hold room for a call's legs; `CapacityExhausted` when there is none."""

    def release(self, call_sid: str) -> None:
        """Give back a reservation no leg used (idempotent; legs release their own slots)."""


class DriverError(Exception):
    """A driver could not do what the engine asked; the engine ends the leg as failed."""


class CapacityExhausted(DriverError):
    pass


class UnknownLeg(DriverError):
    pass
