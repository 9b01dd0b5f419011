"""The simulated carrier: every number is a scripted phone, driven by the injected Clock.

A phone's behaviour decides how each leg dialled to it ends: answered after `answer_after`
seconds (then optionally hung up by the phone after `hangup_after` and keying `dtmf`), busy,
never answered, rejected, unreachable, switched off, or `manual` (a test or a person drives
it through the sim control API). Audio is delegated to a media plane when one is attached.

Behaviours and phones are seen per account: a behaviour set for an account applies to the legs
that account's calls dial (a behaviour set with no account applies to every account that set
none), and an account reads and drives only the legs of its own calls. Two accounts may script
the same number differently without touching each other's calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from callbridge.clock import Clock, Timer
from callbridge.telephony.base import (
    AudioConsumer,
    DialRequest,
    DriverError,
    EventSink,
    Handle,
    IncomingCall,
    IncomingHandler,
    LegEvent,
    LegEventKind,
)

log = logging.getLogger(__name__)

DTMF_DELAY_S = 0.5
"""How long after answering a phone with a `dtmf` behaviour starts keying."""


class Outcome(StrEnum):
    ANSWER = "answer"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    REJECT = "reject"
    UNREACHABLE = "unreachable"
    SWITCHED_OFF = "switched-off"
    MANUAL = "manual"


class PhoneState(StrEnum):
    IDLE = "idle"
    RINGING = "ringing"
    IN_CALL = "in-call"


class LegPhase(StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Behaviour:
    outcome: Outcome = Outcome.ANSWER
    answer_after_s: float = 1.0
    hangup_after_s: float | None = None
    dtmf: str | None = None


DEFAULT_BEHAVIOUR = Behaviour()
MAX_BEHAVIOURS_PER_ACCOUNT = 10_000
"""The control API may script this many numbers per account; memory stays bounded."""


class TooManyBehaviours(DriverError):
    """An account tried to script more than MAX_BEHAVIOURS_PER_ACCOUNT numbers."""


class MediaPlane(Protocol):
    def leg_up(self, leg_sid: str, contact_uri: str) -> None: ...

    def leg_down(self, leg_sid: str) -> None: ...

    def bridge(self, a: str, b: str) -> None: ...

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool) -> Handle: ...

    async def tap(self, leg_sids: Sequence[str], consumer: AudioConsumer) -> Handle: ...


class _NoHandle:
    def stop(self) -> None:
        return None


@dataclass(slots=True)
class SimLeg:
    sid: str
    contact_uri: str
    behaviour: Behaviour
    account_sid: str | None
    phase: LegPhase = LegPhase.RINGING
    timers: list[Timer] = field(default_factory=list)
    peer: str | None = None

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class SimulatedCarrier:
    """A TelephonyDriver whose phones follow scripted behaviours."""

    name = "sim"

    def __init__(self, clock: Clock, media: MediaPlane | None = None) -> None:
        self._clock = clock
        self._media = media
        self._sink: EventSink | None = None
        self._behaviours: dict[str | None, dict[str, Behaviour]] = {}
        """account sid (None: every account) → contact URI → behaviour."""
        self._legs: dict[str, SimLeg] = {}
        self._incoming: IncomingHandler | None = None
        self.timer_lateness_s: list[float] | None = None
        """When set to a list, every fired timer appends how late it ran (benchmarks)."""

    # -- control API ---------------------------------------------------------------------

    def set_behaviour(
        self, contact_uri: str, behaviour: Behaviour, account_sid: str | None = None
    ) -> None:
        """Script the number for `account_sid`'s calls (None: for every account's)."""
        scripted = self._behaviours.setdefault(account_sid, {})
        if contact_uri not in scripted and len(scripted) >= MAX_BEHAVIOURS_PER_ACCOUNT:
            raise TooManyBehaviours(
                f"at most {MAX_BEHAVIOURS_PER_ACCOUNT} numbers may be scripted per account"
            )
        scripted[contact_uri] = behaviour

    def behaviour(self, contact_uri: str, account_sid: str | None = None) -> Behaviour:
        """What the number does when `account_sid`'s call dials it."""
        own = self._behaviours.get(account_sid)
        if own is not None and contact_uri in own:
            return own[contact_uri]
        return self._behaviours.get(None, {}).get(contact_uri, DEFAULT_BEHAVIOUR)

    def reset(self, account_sid: str | None = None) -> None:
        """Forget `account_sid`'s behaviours (None: every behaviour of every account)."""
        if account_sid is None:
            self._behaviours.clear()
        else:
            self._behaviours.pop(account_sid, None)

    def _legs_of(self, contact_uri: str, account_sid: str | None) -> list[SimLeg]:
        return [
            leg
            for leg in self._legs.values()
            if leg.contact_uri == contact_uri
            and (account_sid is None or leg.account_sid == account_sid)
        ]

    def has_live_leg(self, contact_uri: str, account_sid: str) -> bool:
        """Whether one of `account_sid`'s calls has a leg up on the number now."""
        return bool(self._legs_of(contact_uri, account_sid))  # ended legs are dropped at once

    def phone_state(self, contact_uri: str, account_sid: str | None = None) -> PhoneState:
        """The phone as `account_sid`'s calls see it (None: as any call sees it)."""
        state = PhoneState.IDLE
        for leg in self._legs_of(contact_uri, account_sid):
            if leg.phase is LegPhase.ANSWERED:
                return PhoneState.IN_CALL
            if leg.phase is LegPhase.RINGING:
                state = PhoneState.RINGING
        return state

    def act(
        self,
        contact_uri: str,
        action: str,
        digits: str | None = None,
        account_sid: str | None = None,
    ) -> int:
        """Apply a control action to the phone's live legs of `account_sid`'s calls (None: of
        every call); returns how many legs it touched."""
        touched = 0
        for leg in self._legs_of(contact_uri, account_sid):
            if leg.phase is LegPhase.ENDED:
                continue
            if action == "answer" and leg.phase is LegPhase.RINGING:
                self._answer(leg)
            elif action == "reject" and leg.phase is LegPhase.RINGING:
                self._end(leg, LegEventKind.REJECTED)
            elif action == "hangup":
                kind = (
                    LegEventKind.HANGUP if leg.phase is LegPhase.ANSWERED else LegEventKind.REJECTED
                )
                self._end(leg, kind)
            elif action == "dtmf" and leg.phase is LegPhase.ANSWERED and digits:
                self._emit(leg.sid, LegEventKind.DTMF, digits=digits)
            else:
                continue
            touched += 1
        return touched

    def place_incoming(
        self, leg_sid: str, from_uri: str, to_uri: str, account_sid: str | None = None
    ) -> None:
        """A customer (`from_uri`) calls one of our numbers (of `account_sid`): report it to
        the engine.

        The customer's behaviour (for that account) applies once the engine answers:
        `hangup_after` counts from the answer, `dtmf` is keyed after it; `manual` customers
        hang up on request."""
        if self._incoming is None or self._sink is None:
            raise DriverError("the simulated carrier takes no inbound calls now")
        leg = SimLeg(leg_sid, from_uri, self.behaviour(from_uri, account_sid), account_sid)
        self._legs[leg_sid] = leg
        self._incoming(IncomingCall(leg_sid, from_uri, to_uri))

    def set_incoming_handler(self, handler: IncomingHandler) -> None:
        self._incoming = handler

    async def answer(self, leg_sid: str) -> None:
        """Answer an inbound leg; no ANSWERED event is reported for our own answer."""
        leg = self._legs.get(leg_sid)
        if leg is None or leg.phase is not LegPhase.RINGING:
            raise DriverError("cannot answer a leg that is not ringing")
        self._answer(leg, report=False)

    @property
    def active_legs(self) -> int:
        return len(self._legs)

    # -- TelephonyDriver -----------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        self._sink = sink

    async def stop(self) -> None:
        for leg in list(self._legs.values()):
            self._drop(leg)
        self._sink = None

    def capacity(self) -> int | None:
        return None

    async def dial(self, request: DialRequest) -> None:
        if self._sink is None:
            raise DriverError("simulated carrier is not started")
        behaviour = self.behaviour(request.contact_uri, request.account_sid)
        leg = SimLeg(request.leg_sid, request.contact_uri, behaviour, request.account_sid)
        self._legs[leg.sid] = leg
        outcome = behaviour.outcome
        if outcome in (Outcome.UNREACHABLE, Outcome.SWITCHED_OFF):
            self._later(leg, 0.0, lambda: self._end(leg, LegEventKind.FAILED, outcome.value))
            return
        self._later(leg, 0.0, lambda: self._emit(leg.sid, LegEventKind.RINGING))
        after = max(0.0, behaviour.answer_after_s)
        if outcome is Outcome.ANSWER:
            self._later(leg, after, lambda: self._answer(leg))
        elif outcome is Outcome.BUSY:
            self._later(leg, after, lambda: self._end(leg, LegEventKind.BUSY))
        elif outcome is Outcome.REJECT:
            self._later(leg, after, lambda: self._end(leg, LegEventKind.REJECTED))
        # NO_ANSWER and MANUAL ring until the engine or an action ends them.

    async def hangup(self, leg_sid: str) -> None:
        leg = self._legs.get(leg_sid)
        if leg is not None:
            self._drop(leg)

    async def bridge(self, leg_a: str, leg_b: str) -> None:
        a, b = self._legs.get(leg_a), self._legs.get(leg_b)
        if a is None or b is None:
            raise DriverError("cannot bridge a leg that has ended")
        a.peer, b.peer = b.sid, a.sid
        if self._media is not None:
            self._media.bridge(leg_a, leg_b)

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool = False) -> Handle:
        if self._media is None or leg_sid not in self._legs:
            return _NoHandle()
        return await self._media.play(leg_sid, pcm, loop=loop)

    async def tap(self, leg_sids: Sequence[str], consumer: AudioConsumer) -> Handle:
        if self._media is None:
            return _NoHandle()
        return await self._media.tap(leg_sids, consumer)

    # -- internals -----------------------------------------------------------------------

    def _later(self, leg: SimLeg, delay_s: float, action: object) -> None:
        assert callable(action)
        due = self._clock.monotonic() + delay_s
        lateness = self.timer_lateness_s

        def fire() -> None:
            if lateness is not None:
                lateness.append(self._clock.monotonic() - due)
            action()

        leg.timers.append(self._clock.call_later(delay_s, fire))

    def _answer(self, leg: SimLeg, *, report: bool = True) -> None:
        if leg.phase is not LegPhase.RINGING:
            return
        leg.phase = LegPhase.ANSWERED
        if self._media is not None:
            self._media.leg_up(leg.sid, leg.contact_uri)
        if report:
            self._emit(leg.sid, LegEventKind.ANSWERED)
        behaviour = leg.behaviour
        if behaviour.dtmf:
            digits = behaviour.dtmf
            self._later(leg, DTMF_DELAY_S, lambda: self._dtmf(leg, digits))
        if behaviour.hangup_after_s is not None:
            self._later(
                leg, max(0.0, behaviour.hangup_after_s), lambda: self._end(leg, LegEventKind.HANGUP)
            )

    def _dtmf(self, leg: SimLeg, digits: str) -> None:
        if leg.phase is LegPhase.ANSWERED:
            self._emit(leg.sid, LegEventKind.DTMF, digits=digits)

    def _end(self, leg: SimLeg, kind: LegEventKind, reason: str | None = None) -> None:
        """The phone side ends the leg and reports it."""
        if leg.phase is LegPhase.ENDED:
            return
        self._drop(leg)
        self._emit(leg.sid, kind, reason=reason)

    def _drop(self, leg: SimLeg) -> None:
        leg.cancel_timers()
        if leg.phase is LegPhase.ANSWERED and self._media is not None:
            self._media.leg_down(leg.sid)
        leg.phase = LegPhase.ENDED
        self._legs.pop(leg.sid, None)

    def _emit(
        self,
        leg_sid: str,
        kind: LegEventKind,
        *,
        digits: str | None = None,
        reason: str | None = None,
    ) -> None:
        if self._sink is None:
            return
        self._sink(LegEvent(leg_sid, kind, self._clock.monotonic(), digits=digits, reason=reason))
