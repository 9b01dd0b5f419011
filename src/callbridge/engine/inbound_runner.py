"""The per-call state machine of an inbound call: answer the customer, offer the call to agents
(ring, bridge the first to answer), queue or play the no-agent message, and end with a status."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import (
    LegOutcome,
    LegStatus,
)
from callbridge.domain.flows import Fallback, NoAgentAction
from callbridge.domain.routing import Candidate, plan_attempts
from callbridge.store import calls as call_store
from callbridge.store import groups as group_store
from callbridge.telephony.base import DriverError, InboundCapable, LegEvent, LegEventKind

from .core import Change, Message, Shutdown, TimerFired
from .inbound_agents import (
    MAX_ATTEMPTS_PER_CALL,
    Attempt,
    Offer,
    dial_agent,
    reserve_agents,
    set_leg_status,
)
from .inbound_call import InboundCall, Phase
from .inbound_flow_url import apply_route, fetch_route, route_params
from .inbound_queue import message_audio

log = logging.getLogger(__name__)

_UNANSWERED = {
    LegEventKind.BUSY: LegOutcome.BUSY,
    LegEventKind.NO_ANSWER: LegOutcome.NO_ANSWER,
    LegEventKind.REJECTED: LegOutcome.REJECTED,
    LegEventKind.FAILED: LegOutcome.FAILED,
    LegEventKind.HANGUP: LegOutcome.REJECTED,
}


class InboundRunner(InboundCall):
    """Drives one inbound call from the customer's ring to its terminal status."""

    # -- start ---------------------------------------------------------------------------

    async def begin(self) -> None:
        driver = self.driver
        try:
            if not isinstance(driver, InboundCapable):
                raise DriverError("driver cannot answer calls")
            await driver.answer(self.from_leg.sid)
        except DriverError as exc:
            log.info(
                "customer left before answer", extra={"call_sid": self.call.sid, "error": str(exc)}
            )
            self.customer_left = True
            await self._finish()
            return
        now = self.now()
        self.from_leg = set_leg_status(self.from_leg, LegStatus.IN_PROGRESS, now, answered_at=now)
        self.phase = Phase.ROUTING
        # Written with the first agent's leg (one transaction fewer before ringing starts),
        # or by whichever commit comes first.
        self._from_dirty = True
        await self._offer()

    async def _start_media(self) -> None:
        """Media starts once routing options are final (a dynamic URL may turn recording on)."""
        if self.phase is not Phase.ROUTING or self.media is not None or self._hold is not None:
            return
        factory = self.engine.media_factory
        if factory is not None:
            self.media = factory(self.call, self.options)
        if self.media is not None:
            await self.media.from_leg_answered(self.from_leg.sid)
        if self.media is None or not self.options.wait_audio_url:
            await self._play_hold()

    # -- routing -------------------------------------------------------------------------

    async def _candidates(self) -> list[Candidate]:
        store = self.engine.store
        if not self.use_static and (self.route is None or self.refetch):
            self.refetch = False
            await self._flush()
            params = route_params(
                self.call, tz_name=self.tz_name, now=self.now(), last_dialled=self.last_dialled
            )
            route = await fetch_route(
                self.service.guard, self.flow.connect, params, self.account.region
            )
            if route is None:
                if self.flow.connect.fallback is Fallback.STATIC:
                    self.use_static = True
                else:
                    return []
            else:
                self.route = route
                self.options, self.strategy = apply_route(self.options, self.strategy, route)
        if self.use_static:
            async with store.read() as conn:
                return await group_store.static_candidates(
                    conn, self.account.sid, self.flow.connect.destinations, self.now()
                )
        assert self.route is not None
        async with store.read() as conn:
            return await group_store.dynamic_candidates(
                conn, self.account.sid, self.route.targets, self.now()
            )

    async def _offer(self, *, from_queue: bool = False) -> None:
        """Offer the call to the next agent(s); with nobody left, take the no-agent step."""
        while True:
            candidates = await self._candidates()
            await self._start_media()
            plan = plan_attempts(
                self.strategy,
                candidates,
                tried=frozenset(self.tried),
                now=self.now(),
                last_offered=self.service.last_offered(self.flow_key),
            )
            for candidate, reason in plan.skipped:
                self.skipped[candidate.key] = (candidate, reason)
            if not plan.ordered or len(self.attempts) >= MAX_ATTEMPTS_PER_CALL:
                break
            if await self._ring(list(plan.ordered), plan.ring_all):
                return
        if from_queue:
            self._wait_in_queue()
        else:
            await self._no_agent()

    async def _ring(self, ordered: list[Candidate], ring_all: bool) -> bool:
        """Mark and dial the next agent (or every agent, for ring-all); True if one rings.

        Marks and the new `to` legs are written in one transaction. Agents this node is
        already marking or holding are passed over without a database round trip, so
        concurrent calls on one node spread over agents instead of racing for the first."""
        service = self.service
        new: list[Attempt] = []
        self.phase = Phase.RINGING
        try:
            await self._reserve(ordered, ring_all, new)
        except BaseException:
            claimed = [a.leg.contact_uri for a in new if a.candidate.state_managed]
            service.claims.release(self.account.sid, claimed)
            raise
        if not new:
            self.phase = Phase.ROUTING
            return False
        for attempt in new:
            if attempt.candidate.state_managed:
                self.held.add(attempt.candidate.contact_uri)
            self.attempts.append(attempt)
            self.ringing[attempt.leg.sid] = attempt
            self.own_leg(attempt.leg.sid)
        service.offered(self.flow_key, new[-1].candidate.key)
        self.last_dialled = new[-1].candidate.contact_uri
        service.queue.dequeue(self)
        for attempt in new:
            if await dial_agent(self.driver, self.call, attempt, self.options.attempt_timeout_s):
                self.start_timer(f"ring:{attempt.leg.sid}", self.options.attempt_timeout_s)
            else:
                self.disown_leg(attempt.leg.sid)
                await self._attempt_over(attempt, LegOutcome.FAILED, offer_next=False)
        return bool(self.ringing)

    async def _reserve(self, ordered: list[Candidate], ring_all: bool, new: list[Attempt]) -> None:
        """Busy marks, the new `to` legs and the customer's answered leg: one transaction."""
        offer = Offer(
            call=self.call,
            node_id=self.engine.node_id,
            ordered=ordered[: MAX_ATTEMPTS_PER_CALL - len(self.attempts)],
            ring_all=ring_all,
            first_seq=len(self.attempts) + 1,
            now=self.now(),
        )

        async def write(conn: AsyncConnection) -> None:
            if new:
                # An earlier try failed with its whole batch (rolled back): start over.
                self.service.claims.release(
                    self.account.sid,
                    [a.leg.contact_uri for a in new if a.candidate.state_managed],
                )
                new.clear()
            await reserve_agents(
                conn, self.service.claims, offer, tried=self.tried, skipped=self.skipped, new=new
            )
            if new:
                self.call = self._touch()
                await call_store.update_call(conn, self.call)
                if self._from_dirty:
                    await call_store.update_leg(conn, self.from_leg)
                for attempt in new:
                    await call_store.insert_leg(conn, attempt.leg)

        await self.engine.transaction(write)
        if new:
            self._from_dirty = False

    async def _no_agent(self) -> None:
        await self._flush()
        no_agent = self.flow.no_agent
        if no_agent.action is NoAgentAction.QUEUE and not self.queue_expired:
            if "max_wait" not in self._timers:
                self.start_timer("max_wait", no_agent.max_wait_s)
            self._wait_in_queue()
            return
        await self._message_then_end()

    def _wait_in_queue(self) -> None:
        self.phase = Phase.QUEUED
        self.tried.clear()
        self.refetch = not self.use_static and bool(self.route and self.route.fetch_after_attempt)
        self.service.queue.enqueue(self)
        self.start_timer("queue_poll", self.flow.no_agent.retry_interval_s)

    async def _message_then_end(self) -> None:
        self.phase = Phase.MESSAGE
        self.service.queue.dequeue(self)
        self.cancel_timer("queue_poll")
        self.cancel_timer("max_wait")
        self._stop_hold()
        pcm, duration_s = await message_audio(
            self.flow.no_agent, self.service.guard, self.service.max_download_bytes
        )
        if pcm is None or duration_s <= 0:
            await self._hangup_customer_and_finish()
            return
        try:
            self._hold = await self.driver.play(self.from_leg.sid, pcm, loop=False)
        except Exception:
            log.warning("message not played", extra={"call_sid": self.call.sid})
        self.start_timer("message_end", duration_s)

    # -- events --------------------------------------------------------------------------

    async def handle(self, message: Message) -> None:
        if self.phase is Phase.ENDED:
            return
        if isinstance(message, Shutdown):
            await self._shutdown()
        elif isinstance(message, TimerFired):
            await self._on_timer(message.name)
        elif message.leg_sid == self.from_leg.sid:
            await self._on_customer(message)
        elif message.leg_sid in self.ringing:
            await self._on_attempt(self.ringing[message.leg_sid], message)
        elif self.winner is not None and message.leg_sid == self.winner.leg.sid:
            await self._on_agent(message)

    async def _on_timer(self, name: str) -> None:
        if name.startswith("ring:"):
            attempt = self.ringing.get(name[5:])
            if attempt is not None:
                await self.hangup_quietly(attempt.leg.sid)
                await self._attempt_over(attempt, LegOutcome.NO_ANSWER)
        elif name == "queue_poll":
            self._wake_pending = False
            if self.phase is Phase.QUEUED:
                self.cancel_timer("queue_poll")
                self.phase = Phase.ROUTING
                await self._offer(from_queue=True)
        elif name == "max_wait":
            self.queue_expired = True
            if self.phase is Phase.QUEUED:
                await self._message_then_end()
        elif name == "max_time" and self.phase is Phase.BRIDGED:
            await self._hangup_all()
            await self._finish()
        elif name == "message_end" and self.phase is Phase.MESSAGE:
            await self._hangup_customer_and_finish()

    async def _on_customer(self, event: LegEvent) -> None:
        kind = event.kind
        if kind is LegEventKind.DTMF:
            await self._digits(event)
            return
        if kind in (LegEventKind.RINGING, LegEventKind.ANSWERED):
            return  # SIP reports the ACK of our own answer
        self.disown_leg(self.from_leg.sid)
        if self.phase in (Phase.ROUTING, Phase.RINGING, Phase.QUEUED):
            self.customer_left = True
        await self._hangup_all()
        await self._finish()

    async def _on_attempt(self, attempt: Attempt, event: LegEvent) -> None:
        kind = event.kind
        if kind is LegEventKind.RINGING:
            if attempt.leg.status is LegStatus.QUEUED:
                attempt.leg = set_leg_status(attempt.leg, LegStatus.RINGING, self.now())
                await self.commit(Change(self._touch(), legs=[attempt.leg]))
                if self.media is not None:
                    await self.media.to_leg_ringing(attempt.leg.sid)
        elif kind is LegEventKind.ANSWERED:
            await self._connect(attempt)
        elif kind in _UNANSWERED:
            self.disown_leg(attempt.leg.sid)
            await self._attempt_over(attempt, _UNANSWERED[kind])

    async def _on_agent(self, event: LegEvent) -> None:
        if event.kind is LegEventKind.DTMF:
            await self._digits(event)
        elif event.kind in (LegEventKind.HANGUP, LegEventKind.FAILED):
            self.disown_leg(event.leg_sid)
            await self._hangup_all()
            await self._finish()
