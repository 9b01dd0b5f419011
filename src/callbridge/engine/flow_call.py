"""Exotel's "connect a number to a call flow" (v1 `Calls/connect` with `Url=…/exoml/start/…`):
dial `From` first; once it answers, run the flow's connect step for it exactly as for a customer
who called the ExoPhone (agents ring as `to` legs, the no-agent step, queueing, recording).

If `From` never answers the call ends like a click-to-call whose first leg did not
(`from_leg_unanswered` or `from_leg_no_dial`).
"""

from __future__ import annotations

import logging

from callbridge.domain.calls import (
    CallStatus,
    LegOutcome,
    LegStatus,
    derive_outbound_status,
    leg_status_for_unanswered,
)
from callbridge.telephony.base import DialRequest, DriverError, LegEvent, LegEventKind

from .core import Change, Message, Shutdown, TimerFired
from .inbound_agents import set_leg_status
from .inbound_call import Phase
from .inbound_runner import InboundRunner

log = logging.getLogger(__name__)

_NOT_ANSWERED = {
    LegEventKind.BUSY: LegOutcome.BUSY,
    LegEventKind.NO_ANSWER: LegOutcome.NO_ANSWER,
    LegEventKind.REJECTED: LegOutcome.REJECTED,
    LegEventKind.FAILED: LegOutcome.FAILED,
    LegEventKind.HANGUP: LegOutcome.REJECTED,
}

FROM_RING_TIMER = "from_ring"


class FlowCallRunner(InboundRunner):
    """An inbound-style call whose customer leg is dialled by us. `Phase.ANSWERING` is the
    time `From` rings; from its answer on, the inbound runner takes over unchanged."""

    from_outcome: LegOutcome | None = None

    async def begin(self) -> None:
        self.own_leg(self.from_leg.sid)
        if not await self._dial_customer():
            await self._customer_not_reached(LegOutcome.FAILED)
            return
        self.start_timer(FROM_RING_TIMER, self.options.attempt_timeout_s)

    async def _dial_customer(self) -> bool:
        try:
            await self.driver.dial(
                DialRequest(
                    leg_sid=self.from_leg.sid,
                    call_sid=self.call.sid,
                    account_sid=self.call.account_sid,
                    contact_uri=self.from_leg.contact_uri,
                    caller_id=self.call.virtual_number,
                    ring_timeout_s=self.options.attempt_timeout_s,
                )
            )
        except DriverError as exc:
            log.warning(
                "dial failed",
                extra={"call_sid": self.call.sid, "leg": self.from_leg.sid, "error": str(exc)},
            )
            return False
        return True

    async def handle(self, message: Message) -> None:
        if self.phase is not Phase.ANSWERING or isinstance(message, Shutdown):
            await super().handle(message)
        elif isinstance(message, TimerFired):
            if message.name == FROM_RING_TIMER:
                await self.hangup_quietly(self.from_leg.sid)
                await self._customer_not_reached(LegOutcome.NO_ANSWER)
        elif message.leg_sid == self.from_leg.sid:
            await self._on_dialled_customer(message)

    async def _on_dialled_customer(self, event: LegEvent) -> None:
        kind = event.kind
        if kind is LegEventKind.RINGING and self.from_leg.status is LegStatus.QUEUED:
            self.from_leg = set_leg_status(self.from_leg, LegStatus.RINGING, self.now())
            await self.commit(Change(self._touch(), legs=[self.from_leg]))
        elif kind is LegEventKind.ANSWERED:
            await self._customer_answered()
        elif kind in _NOT_ANSWERED:
            self.disown_leg(self.from_leg.sid)
            await self._customer_not_reached(_NOT_ANSWERED[kind])

    async def _customer_answered(self) -> None:
        self.cancel_timer(FROM_RING_TIMER)
        now = self.now()
        self.from_outcome = LegOutcome.ANSWERED
        self.from_leg = set_leg_status(self.from_leg, LegStatus.IN_PROGRESS, now, answered_at=now)
        self.phase = Phase.ROUTING
        # Written with the first agent's leg, as for an inbound call.
        self._from_dirty = True
        await self._offer()

    async def _customer_not_reached(self, outcome: LegOutcome) -> None:
        self.cancel_timer(FROM_RING_TIMER)
        self.from_outcome = outcome
        now = self.now()
        if not self.from_leg.status.is_final:
            self.from_leg = set_leg_status(
                self.from_leg, leg_status_for_unanswered(outcome), now, ended_at=now
            )
        await self._finish()

    def _terminal_status(self, agent_outcomes: list[LegOutcome]) -> CallStatus:
        if self.from_outcome is not LegOutcome.ANSWERED:
            return derive_outbound_status(self.from_outcome or LegOutcome.FAILED, None)
        return super()._terminal_status(agent_outcomes)
