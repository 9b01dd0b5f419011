"""The state of one inbound call and how it settles: bridging the first agent to answer, freeing
agents who do not, hanging up, and writing the terminal status with the leg history."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import (
    Call,
    CallState,
    CallStatus,
    Leg,
    LegOutcome,
    LegStatus,
    append_digits,
    derive_inbound_status,
    leg_status_for_unanswered,
)
from callbridge.domain.flows import FlowDefinition, Strategy
from callbridge.domain.options import CallbackEvent, CallOptions
from callbridge.domain.routing import Candidate, DynamicRoute, SkipReason
from callbridge.store.accounts import Account
from callbridge.telephony.base import DriverError, Handle, LegEvent

from .core import CallEngine, CallRunner, Change, TimerFired
from .inbound_agents import Attempt, end_attempts, release_agents, set_leg_status, skipped_history
from .inbound_queue import tone

if TYPE_CHECKING:
    from .inbound import InboundService

log = logging.getLogger(__name__)

_COOLDOWN_OUTCOMES = frozenset({LegOutcome.NO_ANSWER, LegOutcome.REJECTED, LegOutcome.BUSY})


class Phase(StrEnum):
    ANSWERING = "answering"
    ROUTING = "routing"
    RINGING = "ringing"
    QUEUED = "queued"
    BRIDGED = "bridged"
    MESSAGE = "message"
    ENDED = "ended"


class InboundCall(CallRunner):
    """One inbound call's state and how it settles; `InboundRunner` adds routing and events."""

    def __init__(
        self,
        engine: CallEngine,
        call: Call,
        options: CallOptions,
        tz_name: str,
        service: InboundService,
        account: Account,
        flow: FlowDefinition,
        from_leg: Leg,
    ) -> None:
        super().__init__(engine, call, options, tz_name)
        self.service = service
        self.account = account
        self.flow = flow
        self.flow_key = call.app_id or ""
        self.phase = Phase.ANSWERING
        self.from_leg = from_leg
        self.attempts: list[Attempt] = []
        self.ringing: dict[str, Attempt] = {}
        self.winner: Attempt | None = None
        self.tried: set[str] = set()
        self.skipped: dict[str, tuple[Candidate, SkipReason]] = {}
        self.strategy: Strategy = flow.connect.strategy
        self.use_static = not flow.is_dynamic
        self.route: DynamicRoute | None = None
        self.refetch = False
        self.last_dialled: str | None = None
        self.customer_left = False
        self.queue_expired = False
        self.held: set[str] = set()
        """Contact URIs this call holds a busy mark (and an in-process claim) on."""
        self._hold: Handle | None = None
        self._wake_pending = False
        self._from_dirty = False

    @property
    def account_sid(self) -> str:
        return self.call.account_sid

    async def commit(self, change: Change) -> None:
        if self._from_dirty:
            self._from_dirty = False
            change.legs.insert(0, self.from_leg)
        await super().commit(change)

    async def _flush(self) -> None:
        if self._from_dirty:
            await self.commit(Change(self._touch()))

    async def _play_hold(self) -> None:
        try:
            self._hold = await self.driver.play(self.from_leg.sid, tone(2.0), loop=True)
        except Exception:
            log.warning("hold audio not played", extra={"call_sid": self.call.sid})

    def _stop_hold(self) -> None:
        if self._hold is not None:
            try:
                self._hold.stop()
            except Exception:
                log.debug("hold audio stop failed", exc_info=True)
            self._hold = None

    def wake(self) -> None:
        """Look for a free agent soon (called when an agent may have freed up)."""
        if self.phase is Phase.QUEUED and not self._wake_pending:
            self._wake_pending = True
            self.post(TimerFired("queue_poll"))

    async def _offer(self, *, from_queue: bool = False) -> None:
        """Offer the call to the next agent(s) (see `InboundRunner`)."""
        raise NotImplementedError

    # -- transitions ---------------------------------------------------------------------

    async def _connect(self, attempt: Attempt) -> None:
        """First answer wins: cancel every other ringing agent at once, then bridge."""
        self.ringing.pop(attempt.leg.sid, None)
        self.cancel_timer(f"ring:{attempt.leg.sid}")
        now = self.now()
        losers = list(self.ringing.values())
        self.ringing.clear()
        for loser in losers:
            self.cancel_timer(f"ring:{loser.leg.sid}")
            await self.hangup_quietly(loser.leg.sid)
            loser.outcome = LegOutcome.CANCELED
            loser.leg = set_leg_status(loser.leg, LegStatus.CANCELED, now, ended_at=now)
        await self._release([a.candidate for a in losers], cooldown=False)
        try:
            await self.driver.bridge(self.from_leg.sid, attempt.leg.sid)
        except DriverError as exc:
            log.warning("bridge failed", extra={"call_sid": self.call.sid, "error": str(exc)})
            await self.hangup_quietly(attempt.leg.sid)
            if losers:
                await self.commit(Change(self._touch(), legs=[a.leg for a in losers]))
            self.ringing[attempt.leg.sid] = attempt
            await self._attempt_over(attempt, LegOutcome.FAILED)
            return
        self._stop_hold()
        self.winner = attempt
        attempt.outcome = LegOutcome.ANSWERED
        self.phase = Phase.BRIDGED
        self.bridged_at = self.clock.monotonic()
        attempt.leg = set_leg_status(attempt.leg, LegStatus.IN_PROGRESS, now, answered_at=now)
        self.start_timer("max_time", self.options.max_time_limit_s)
        self.cancel_timer("max_wait")
        call = self._touch(to_uri=attempt.leg.contact_uri, talk_time_s=0.0)
        # The customer's leg rides along so the answered event's views see every leg.
        self._from_dirty = False
        await self.commit(
            Change(
                call,
                legs=[self.from_leg, attempt.leg, *[a.leg for a in losers]],
                event=CallbackEvent.ANSWERED,
            )
        )
        log.info(
            "inbound call connected",
            extra={"call_sid": self.call.sid, "leg": attempt.leg.sid, "canceled": len(losers)},
        )
        if self.media is not None:
            await self.media.bridged(self.from_leg.sid, attempt.leg.sid)

    async def _attempt_over(
        self, attempt: Attempt, outcome: LegOutcome, *, offer_next: bool = True
    ) -> None:
        """An agent did not take the call: free them, maybe cool them down, try the next."""
        self.ringing.pop(attempt.leg.sid, None)
        self.cancel_timer(f"ring:{attempt.leg.sid}")
        now = self.now()
        attempt.outcome = outcome
        attempt.leg = set_leg_status(
            attempt.leg, leg_status_for_unanswered(outcome), now, ended_at=now
        )
        await self._release([attempt.candidate], cooldown=outcome in _COOLDOWN_OUTCOMES)
        await self.commit(Change(self._touch(), legs=[attempt.leg]))
        self.service.queue.agent_freed(self.account.sid)
        if not offer_next or self.ringing or self.phase is not Phase.RINGING:
            return
        self.phase = Phase.ROUTING
        self.refetch = not self.use_static and bool(self.route and self.route.fetch_after_attempt)
        await self._offer()

    async def _release(self, candidates: list[Candidate], *, cooldown: bool) -> None:
        uris = [c.contact_uri for c in candidates if c.state_managed]
        self.service.claims.release(self.account.sid, [u for u in uris if u in self.held])
        self.held.difference_update(uris)
        cooldown_s = self.flow.connect.cooldown_s
        cooling = [c.user_id for c in candidates if c.user_id] if cooldown and cooldown_s else []
        if not uris and not cooling:
            return
        call, now = self.call, self.now()

        async def write(conn: AsyncConnection) -> None:
            await release_agents(conn, call, uris, cooling, cooldown_s, now)

        await self.engine.transaction(write)

    async def _digits(self, event: LegEvent) -> None:
        if not event.digits:
            return
        self.call = replace(self.call, digits=append_digits(self.call.digits, event.digits))
        if self.media is not None:
            await self.media.dtmf(event.leg_sid, event.digits)

    async def _hangup_customer_and_finish(self) -> None:
        await self.hangup_quietly(self.from_leg.sid)
        await self._finish()

    async def _hangup_all(self) -> None:
        await self.hangup_quietly(self.from_leg.sid)
        if self.winner is not None:
            await self.hangup_quietly(self.winner.leg.sid)
        now = self.now()
        for attempt in list(self.ringing.values()):
            self.cancel_timer(f"ring:{attempt.leg.sid}")
            await self.hangup_quietly(attempt.leg.sid)
            attempt.outcome = LegOutcome.CANCELED
            attempt.leg = set_leg_status(attempt.leg, LegStatus.CANCELED, now, ended_at=now)
        self.ringing.clear()

    async def _shutdown(self) -> None:
        await self._hangup_all()
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
            self.service.queue.dequeue(self)
            self.finished = True

    async def _finish(self) -> None:
        self.phase = Phase.ENDED
        self.service.queue.dequeue(self)
        self.cancel_all_timers()
        self._stop_hold()
        now = self.now()
        legs = [self._final_from_leg(now), *end_attempts(self.attempts, now)]
        outcomes = [a.outcome or LegOutcome.FAILED for a in self.attempts]
        status = self._terminal_status(outcomes)
        new_legs: list[Leg] = []
        if not self.attempts:
            new_legs = skipped_history(self.call.sid, self.skipped.values(), now)
        talk_s = self.talk_time_s()
        recordings = await self.finish_media()
        call = self._touch(
            state=CallState.TERMINAL,
            status=status,
            end_at=now,
            talk_time_s=talk_s,
            recordings=recordings,
        )
        await self.commit(
            Change(
                call,
                legs=legs,
                new_legs=new_legs,
                event=CallbackEvent.TERMINAL,
                release_marks=True,
            )
        )
        self.service.claims.release(self.account.sid, self.held)
        self.held.clear()
        self.finished = True
        log.info(
            "inbound call ended",
            extra={
                "call_sid": call.sid,
                "status": status.value,
                "attempts": len(self.attempts),
                "talk_s": round(talk_s, 3),
            },
        )

    def _terminal_status(self, agent_outcomes: list[LegOutcome]) -> CallStatus:
        """The call's status from its agents' outcomes (a call that dials its customer first
        also looks at how that leg ended)."""
        return derive_inbound_status(agent_outcomes, self.customer_left)

    def _final_from_leg(self, now: datetime) -> Leg:
        leg = self.from_leg
        if leg.status.is_final:
            return leg
        if leg.status is LegStatus.IN_PROGRESS:
            self.from_leg = set_leg_status(leg, LegStatus.COMPLETED, now, ended_at=now)
        else:
            self.from_leg = set_leg_status(leg, LegStatus.CANCELED, now, ended_at=now)
        return self.from_leg

    def _touch(self, **changes: Any) -> Call:
        return replace(self.call, updated_at=self.now(), **changes)
