"""Click-to-call: dial leg 1, wait audio, dial leg 2, bridge, end — one runner per call."""

from __future__ import annotations

import logging
from dataclasses import replace
from enum import StrEnum
from typing import Any

from callbridge.domain.calls import (
    Call,
    CallState,
    Leg,
    LegOutcome,
    LegSide,
    LegStatus,
    append_digits,
    check_leg_transition,
    derive_outbound_status,
    leg_status_for_unanswered,
)
from callbridge.domain.options import CallbackEvent, CallOptions
from callbridge.ids import new_sid
from callbridge.telephony.base import DialRequest, DriverError, LegEvent, LegEventKind

from .core import CallEngine, CallRunner, Change, Message, Shutdown, TimerFired

log = logging.getLogger(__name__)

_UNANSWERED = {
    LegEventKind.BUSY: LegOutcome.BUSY,
    LegEventKind.NO_ANSWER: LegOutcome.NO_ANSWER,
    LegEventKind.REJECTED: LegOutcome.REJECTED,
    LegEventKind.FAILED: LegOutcome.FAILED,
}


class Phase(StrEnum):
    DIALING_FROM = "dialing_from"
    DIALING_TO = "dialing_to"
    BRIDGED = "bridged"
    ENDED = "ended"


def set_leg_status(leg: Leg, status: LegStatus, at: Any, **changes: Any) -> Leg:
    check_leg_transition(leg.status, status)
    return replace(leg, status=status, updated_at=at, **changes)


class OutboundRunner(CallRunner):
    """Drives one click-to-call from admission to its terminal status."""

    def __init__(
        self,
        engine: CallEngine,
        call: Call,
        options: CallOptions,
        tz_name: str,
        from_leg: Leg,
    ) -> None:
        super().__init__(engine, call, options, tz_name)
        self.phase = Phase.DIALING_FROM
        self.from_leg = from_leg
        self.to_leg: Leg | None = None
        self.from_outcome: LegOutcome | None = None
        self.to_outcome: LegOutcome | None = None
        self.media = engine.media_factory(call, options) if engine.media_factory else None

    # -- start ---------------------------------------------------------------------------

    async def begin(self) -> None:
        self.own_leg(self.from_leg.sid)
        if not await self._dial(self.from_leg):
            await self._from_unanswered(LegOutcome.FAILED)
            return
        self.start_timer("from_ring", self.options.attempt_timeout_s)

    async def _dial(self, leg: Leg) -> bool:
        try:
            await self.driver.dial(
                DialRequest(
                    leg_sid=leg.sid,
                    call_sid=self.call.sid,
                    account_sid=self.call.account_sid,
                    contact_uri=leg.contact_uri,
                    caller_id=self.call.virtual_number,
                    ring_timeout_s=self.options.attempt_timeout_s,
                )
            )
        except DriverError as exc:
            log.warning(
                "dial failed",
                extra={"call_sid": self.call.sid, "leg": leg.sid, "error": str(exc)},
            )
            return False
        return True

    # -- events --------------------------------------------------------------------------

    async def handle(self, message: Message) -> None:
        if self.phase is Phase.ENDED:
            return
        if isinstance(message, Shutdown):
            await self._shutdown()
        elif isinstance(message, TimerFired):
            await self._on_timer(message.name)
        elif message.leg_sid == self.from_leg.sid:
            await self._on_from_event(message)
        elif self.to_leg is not None and message.leg_sid == self.to_leg.sid:
            await self._on_to_event(message)

    async def _on_timer(self, name: str) -> None:
        if name == "from_ring" and self.phase is Phase.DIALING_FROM:
            await self.hangup_quietly(self.from_leg.sid)
            await self._from_unanswered(LegOutcome.NO_ANSWER)
        elif name == "to_ring" and self.phase is Phase.DIALING_TO and self.to_leg is not None:
            await self.hangup_quietly(self.to_leg.sid)
            await self.hangup_quietly(self.from_leg.sid)
            self.to_outcome = LegOutcome.NO_ANSWER
            await self._finish()
        elif name == "max_time" and self.phase is Phase.BRIDGED:
            await self._hangup_all()
            await self._finish()

    async def _on_from_event(self, event: LegEvent) -> None:
        kind = event.kind
        if kind is LegEventKind.DTMF:
            await self._digits(event)
        elif self.phase is Phase.DIALING_FROM:
            if kind is LegEventKind.RINGING and self.from_leg.status is LegStatus.QUEUED:
                self.from_leg = set_leg_status(self.from_leg, LegStatus.RINGING, self.now())
                await self.commit(Change(self._touch(), legs=[self.from_leg]))
            elif kind is LegEventKind.ANSWERED:
                await self._from_answered()
            elif kind in _UNANSWERED or kind is LegEventKind.HANGUP:
                self.disown_leg(self.from_leg.sid)
                await self._from_unanswered(_UNANSWERED.get(kind, LegOutcome.REJECTED))
        elif kind in (LegEventKind.HANGUP, LegEventKind.FAILED):
            self.disown_leg(self.from_leg.sid)
            if self.phase is Phase.DIALING_TO and self.to_leg is not None:
                await self.hangup_quietly(self.to_leg.sid)
                self.to_outcome = LegOutcome.CANCELED
            elif self.to_leg is not None:
                await self.hangup_quietly(self.to_leg.sid)
            await self._finish()

    async def _on_to_event(self, event: LegEvent) -> None:
        assert self.to_leg is not None
        kind = event.kind
        if kind is LegEventKind.DTMF:
            await self._digits(event)
        elif self.phase is Phase.DIALING_TO:
            if kind is LegEventKind.RINGING and self.to_leg.status is LegStatus.QUEUED:
                self.to_leg = set_leg_status(self.to_leg, LegStatus.RINGING, self.now())
                await self.commit(Change(self._touch(), legs=[self.to_leg]))
                if self.media is not None:
                    await self.media.to_leg_ringing(self.to_leg.sid)
            elif kind is LegEventKind.ANSWERED:
                await self._bridge()
            elif kind in _UNANSWERED or kind is LegEventKind.HANGUP:
                self.disown_leg(self.to_leg.sid)
                await self.hangup_quietly(self.from_leg.sid)
                self.to_outcome = _UNANSWERED.get(kind, LegOutcome.REJECTED)
                await self._finish()
        elif kind in (LegEventKind.HANGUP, LegEventKind.FAILED):
            self.disown_leg(self.to_leg.sid)
            await self.hangup_quietly(self.from_leg.sid)
            await self._finish()

    # -- transitions ---------------------------------------------------------------------

    async def _from_answered(self) -> None:
        self.cancel_timer("from_ring")
        now = self.now()
        self.from_outcome = LegOutcome.ANSWERED
        self.from_leg = set_leg_status(self.from_leg, LegStatus.IN_PROGRESS, now, answered_at=now)
        assert self.call.to_uri is not None
        self.to_leg = Leg(
            sid=new_sid(),
            call_sid=self.call.sid,
            side=LegSide.TO,
            seq=1,
            contact_uri=self.call.to_uri,
            name=None,
            status=LegStatus.QUEUED,
            created_at=now,
            updated_at=now,
        )
        self.phase = Phase.DIALING_TO
        self.own_leg(self.to_leg.sid)
        # Media first: its hooks return at once, and audio must not wait for the database.
        if self.media is not None:
            await self.media.from_leg_answered(self.from_leg.sid)
        await self.commit(Change(self._touch(), legs=[self.from_leg], new_legs=[self.to_leg]))
        if not await self._dial(self.to_leg):
            self.disown_leg(self.to_leg.sid)
            await self.hangup_quietly(self.from_leg.sid)
            self.to_outcome = LegOutcome.FAILED
            await self._finish()
            return
        self.start_timer("to_ring", self.options.attempt_timeout_s)

    async def _bridge(self) -> None:
        assert self.to_leg is not None
        self.cancel_timer("to_ring")
        now = self.now()
        try:
            await self.driver.bridge(self.from_leg.sid, self.to_leg.sid)
        except DriverError as exc:
            log.warning("bridge failed", extra={"call_sid": self.call.sid, "error": str(exc)})
            await self._hangup_all()
            self.to_outcome = LegOutcome.FAILED
            await self._finish()
            return
        self.to_outcome = LegOutcome.ANSWERED
        self.phase = Phase.BRIDGED
        self.bridged_at = self.clock.monotonic()
        self.to_leg = set_leg_status(self.to_leg, LegStatus.IN_PROGRESS, now, answered_at=now)
        self.start_timer("max_time", self.options.max_time_limit_s)
        # Recording starts with the talk time, not after the database write.
        if self.media is not None:
            await self.media.bridged(self.from_leg.sid, self.to_leg.sid)
        # Leg 1 rides along (unchanged) so the answered event's views see both legs.
        await self.commit(
            Change(
                self._touch(talk_time_s=0.0),
                legs=[self.from_leg, self.to_leg],
                event=CallbackEvent.ANSWERED,
            )
        )

    async def _digits(self, event: LegEvent) -> None:
        if not event.digits:
            return
        self.call = replace(self.call, digits=append_digits(self.call.digits, event.digits))
        if self.media is not None:
            await self.media.dtmf(event.leg_sid, event.digits)

    async def _from_unanswered(self, outcome: LegOutcome) -> None:
        self.from_outcome = outcome
        await self._finish()

    async def _hangup_all(self) -> None:
        await self.hangup_quietly(self.from_leg.sid)
        if self.to_leg is not None:
            await self.hangup_quietly(self.to_leg.sid)

    async def _shutdown(self) -> None:
        await self._hangup_all()
        if self.from_outcome is None:
            self.from_outcome = LegOutcome.FAILED
        elif self.to_outcome is None:
            self.to_outcome = LegOutcome.FAILED
        await self._finish()

    async def abort(self, reason: str) -> None:
        if self.phase is Phase.ENDED:
            self.finished = True
            return
        log.error("aborting call", extra={"call_sid": self.call.sid, "reason": reason})
        try:
            await self._shutdown()
        except Exception:
            log.exception("abort failed", extra={"call_sid": self.call.sid})
            self.phase = Phase.ENDED
            self.finished = True

    async def _finish(self) -> None:
        self.phase = Phase.ENDED
        self.cancel_all_timers()
        now = self.now()
        from_outcome = self.from_outcome or LegOutcome.FAILED
        status = derive_outbound_status(from_outcome, self.to_outcome)
        talk_s = self.talk_time_s()
        legs = [self._final_leg(self.from_leg, from_outcome, now)]
        if self.to_leg is not None:
            legs.append(self._final_leg(self.to_leg, self.to_outcome or LegOutcome.FAILED, now))
        recordings = await self.finish_media()
        call = self._touch(
            state=CallState.TERMINAL,
            status=status,
            end_at=now,
            talk_time_s=talk_s,
            recordings=recordings,
        )
        await self.commit(Change(call, legs=legs, event=CallbackEvent.TERMINAL, release_marks=True))
        self.finished = True
        log.info(
            "call ended",
            extra={"call_sid": call.sid, "status": status.value, "talk_s": round(talk_s, 3)},
        )

    def _final_leg(self, leg: Leg, outcome: LegOutcome, now: Any) -> Leg:
        if leg.status.is_final:
            return leg
        if leg.status is LegStatus.IN_PROGRESS:
            return set_leg_status(leg, LegStatus.COMPLETED, now, ended_at=now)
        return set_leg_status(leg, leg_status_for_unanswered(outcome), now, ended_at=now)

    def _touch(self, **changes: Any) -> Call:
        return replace(self.call, updated_at=self.now(), **changes)
