"""Inbound calls: a call to an ExoPhone runs its flow — candidates → ring → bridge → end — in one
`InboundRunner` per call; `install` wires the driver's incoming handler and the sim entry point.

The customer is the `from` leg; each agent offered the call gets a `to` leg, in order. An agent
is marked busy (the same compare-and-set registry click-to-call uses) when they start ringing,
freed if they do not answer, and stays busy while talking, so inbound and outbound never
offer one agent two calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
from array import array
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx

from callbridge.domain.calls import (
    Call,
    CallState,
    Direction,
    Leg,
    LegOutcome,
    LegSide,
    LegStatus,
    check_leg_transition,
    derive_inbound_status,
    leg_status_for_unanswered,
)
from callbridge.domain.flows import Fallback, FlowDefinition, NoAgentAction, Strategy
from callbridge.domain.options import CallbackEvent, CallOptions
from callbridge.domain.routing import (
    Candidate,
    DynamicResponseInvalid,
    DynamicRoute,
    SkipReason,
    parse_dynamic_response,
    plan_attempts,
    skipped_leg_status,
)
from callbridge.domain.views import zone
from callbridge.errors import CallbridgeError, ServiceUnavailable, VirtualNumberNotFound
from callbridge.ids import new_sid
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store import accounts as account_store
from callbridge.store import calls as call_store
from callbridge.store import flows as flow_store
from callbridge.store import groups as group_store
from callbridge.store import users as user_store
from callbridge.store.accounts import Account
from callbridge.telephony.base import (
    SAMPLE_RATE,
    DialRequest,
    DriverError,
    Handle,
    InboundCapable,
    IncomingCall,
    LegEvent,
    LegEventKind,
)
from callbridge.webhooks.ssrf import PinnedTransport, UnsafeUrl, UrlGuard

from .core import CallEngine, CallRunner, Change, MediaSession, Message, Shutdown, TimerFired

if TYPE_CHECKING:
    from callbridge.api.services import Services

log = logging.getLogger(__name__)

MAX_URL_BODY_BYTES = 64 * 1024
MAX_ATTEMPTS_PER_CALL = 200
"""A safety cap on `to` legs per call (a dynamic URL that keeps answering new numbers)."""
MESSAGE_FETCH_TIMEOUT_S = 5.0
MAX_MESSAGE_S = 300.0
EXOTEL_VERSION = "1.1"

_UNANSWERED = {
    LegEventKind.BUSY: LegOutcome.BUSY,
    LegEventKind.NO_ANSWER: LegOutcome.NO_ANSWER,
    LegEventKind.REJECTED: LegOutcome.REJECTED,
    LegEventKind.FAILED: LegOutcome.FAILED,
    LegEventKind.HANGUP: LegOutcome.REJECTED,
}
_COOLDOWN_OUTCOMES = frozenset({LegOutcome.NO_ANSWER, LegOutcome.REJECTED, LegOutcome.BUSY})


class Phase(StrEnum):
    ANSWERING = "answering"
    ROUTING = "routing"
    RINGING = "ringing"
    QUEUED = "queued"
    BRIDGED = "bridged"
    MESSAGE = "message"
    ENDED = "ended"


@dataclass(slots=True)
class Attempt:
    """One agent offered the call: their `to` leg and how it ended."""

    leg: Leg
    candidate: Candidate
    outcome: LegOutcome | None = None


def set_leg_status(leg: Leg, status: LegStatus, at: Any, **changes: Any) -> Leg:
    check_leg_transition(leg.status, status)
    return replace(leg, status=status, updated_at=at, **changes)


def tone(duration_s: float) -> bytes:
    """Hold/message audio: the media layer's fallback tone, or a 425 Hz beep pattern."""
    try:
        from callbridge.media.audio import fallback_tone

        return fallback_tone(max(duration_s, 0.02))
    except ImportError:  # the media layer is optional for routing
        n = max(1, int(duration_s * SAMPLE_RATE))
        period = SAMPLE_RATE // 425
        wave = [3000 if (i % period) < period // 2 else -3000 for i in range(n)]
        return array("h", wave).tobytes()


def options_for(flow: FlowDefinition) -> CallOptions:
    """What an inbound call is asked to do, from its flow (stored with the call)."""
    c = flow.connect
    return CallOptions(
        attempt_timeout_s=c.attempt_timeout_s,
        max_time_limit_s=c.max_conversation_s,
        recording=c.recording,
        wait_audio_url=c.wait_audio_url,
        status_callbacks=flow.status_callbacks,
        state_management=True,
    )


def dialled_number(to_uri: str) -> str:
    """The ExoPhone a call was made to: E.164 from a number or the user part of a SIP URI."""
    raw = to_uri.strip()
    if raw.lower().startswith(("sip:", "sips:")):
        raw = raw.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0]
    try:
        return normalise(raw).uri
    except InvalidContactUri as exc:
        raise VirtualNumberNotFound(f"{raw[:64]} is not an ExoPhone") from exc


def customer_uri(from_uri: str, region: str) -> str:
    try:
        return normalise(from_uri, region).uri
    except InvalidContactUri:
        return from_uri.strip()[:255] or "anonymous"


class InboundService:
    """Admits inbound calls, runs their flows, and keeps what routing shares across calls:
    the round-robin cursor of each flow and the callers waiting in queue."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.engine: CallEngine = services.engine
        self.guard: UrlGuard = services.guard
        self._round_robin: dict[str, str] = {}
        self._claims: set[tuple[str, str]] = set()
        self._queued: dict[InboundRunner, None] = {}
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.engine.add_listener(self._on_committed)

    # -- entry points ----------------------------------------------------------------------

    async def start_inbound(self, from_number: str, to_exophone: str) -> str:
        """The simulated carrier's `POST /sim/v1/incoming`: a customer calls an ExoPhone."""
        number = dialled_number(to_exophone)
        async with self.services.store.read() as conn:
            phone = await account_store.exophone_by_number(conn, number)
        if phone is None:
            raise VirtualNumberNotFound(f"{number} is not an ExoPhone")
        sim = self.services.sim
        if sim is None:
            raise ServiceUnavailable("the simulated carrier is not running")
        leg_sid = new_sid()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[leg_sid] = future
        try:
            try:
                sim.place_incoming(leg_sid, from_number.strip(), number)
            except DriverError as exc:
                raise ServiceUnavailable(str(exc)) from exc
            return await future
        finally:
            self._pending.pop(leg_sid, None)

    def on_incoming(self, incoming: IncomingCall) -> None:
        """The driver's incoming handler (runs on the event loop, must not block)."""
        task = asyncio.get_running_loop().create_task(self._admit_incoming(incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit_incoming(self, incoming: IncomingCall) -> None:
        future = self._pending.get(incoming.leg_sid)
        try:
            call = await self.admit(incoming)
        except Exception as exc:
            if not isinstance(exc, CallbridgeError):
                log.exception("inbound admission failed", extra={"leg": incoming.leg_sid})
            try:
                await self.engine.driver.hangup(incoming.leg_sid)
            except Exception:
                log.warning("hangup of refused inbound leg failed", extra={"leg": incoming.leg_sid})
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        if future is not None and not future.done():
            future.set_result(call.sid)

    async def admit(self, incoming: IncomingCall) -> Call:
        """Create the call and its customer leg for the ExoPhone's flow, then start its runner."""
        engine = self.engine
        number = dialled_number(incoming.to_uri)
        now = engine.clock.now()
        async with self.services.store.read() as conn:
            phone = await account_store.exophone_by_number(conn, number)
            account = await account_store.get_account(conn, phone.account_sid) if phone else None
            if phone is None or account is None:
                raise VirtualNumberNotFound(f"{number} is not an ExoPhone")
            flow = (
                await flow_store.get_flow(conn, account.sid, phone.flow_id)
                if phone.flow_id
                else None
            )
        definition = flow.definition if flow is not None else FlowDefinition()
        options = options_for(definition)
        customer = customer_uri(incoming.from_uri, account.region)
        async with self.services.store.tx() as conn:
            call = Call(
                sid=new_sid(),
                account_sid=account.sid,
                direction=Direction.INBOUND,
                virtual_number=phone.number,
                from_uri=customer,
                to_uri=None,
                state=CallState.ACTIVE,
                status=None,
                created_at=now,
                updated_at=now,
                start_at=now,
                app_id=flow.id if flow else None,
                app_name=flow.name if flow else None,
            )
            await call_store.insert_call(conn, call, options, engine.node_id)
            from_leg = Leg(
                sid=incoming.leg_sid,
                call_sid=call.sid,
                side=LegSide.FROM,
                seq=1,
                contact_uri=customer,
                name=None,
                status=LegStatus.RINGING,
                created_at=now,
                updated_at=now,
            )
            await call_store.insert_leg(conn, from_leg)
        bind = getattr(engine.driver, "bind_call", None)
        if callable(bind):
            bind(incoming.leg_sid, call.sid)
        runner = InboundRunner(
            engine, call, options, account.timezone, self, account, definition, from_leg
        )
        runner.own_leg(from_leg.sid)
        engine.launch(runner)
        log.info(
            "inbound call admitted",
            extra={"call_sid": call.sid, "flow": call.app_id, "virtual_number": phone.number},
        )
        return call

    # -- shared routing state --------------------------------------------------------------

    def last_offered(self, flow_key: str) -> str | None:
        return self._round_robin.get(flow_key)

    def offered(self, flow_key: str, candidate_key: str) -> None:
        self._round_robin[flow_key] = candidate_key

    def claim(self, claim: tuple[str, str]) -> bool:
        """Reserve (account, contact URI) for one of this node's calls while it marks/holds it."""
        if claim in self._claims:
            return False
        self._claims.add(claim)
        return True

    def unclaim(self, claim: tuple[str, str]) -> None:
        self._claims.discard(claim)

    def unclaim_all(self, account_sid: str, contact_uris: list[str]) -> None:
        for uri in contact_uris:
            self._claims.discard((account_sid, uri))

    def enqueue(self, runner: InboundRunner) -> None:
        self._queued[runner] = None

    def dequeue(self, runner: InboundRunner) -> None:
        self._queued.pop(runner, None)

    @property
    def queued_calls(self) -> int:
        return len(self._queued)

    def agent_freed(self, account_sid: str) -> None:
        """An agent may be free now: let the account's queued callers look, oldest first."""
        for runner in list(self._queued):
            if runner.call.account_sid == account_sid:
                runner.wake()

    def _on_committed(self, call: Call) -> None:
        if call.state is CallState.TERMINAL:
            self.agent_freed(call.account_sid)

    # -- dynamic URL ---------------------------------------------------------------------

    async def fetch_route(self, runner: InboundRunner) -> DynamicRoute | None:
        """GET the flow's dynamic URL (Exotel CCM programmable connect); None when it fails."""
        connect = runner.flow.connect
        url = connect.url
        if url is None:
            return None
        call = runner.call
        tz = zone(runner.tz_name)
        params = {
            "CallSid": call.sid,
            "CallFrom": call.from_uri,
            "CallTo": call.virtual_number,
            "From": call.from_uri,
            "To": call.virtual_number,
            "Direction": "incoming",
            "Created": call.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
            "CurrentTime": runner.now().astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
            "flow_id": call.app_id or "",
            "CustomField": call.custom_field or "",
            "DialWhomNumber": runner.last_dialled or "",
            "digits": call.digits or "",
        }
        headers = {"Exotel-Version": EXOTEL_VERSION, "Accept": "application/json"}
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(connect.url_timeout_s):
                await self.guard.check(url)
                transport = PinnedTransport(self.guard, max_connections=1)
                async with (
                    httpx.AsyncClient(transport=transport, timeout=connect.url_timeout_s) as client,
                    client.stream(
                        "GET",
                        httpx.URL(url).copy_merge_params(params),
                        headers=headers,
                        follow_redirects=False,
                    ) as response,
                ):
                    if response.status_code != 200:
                        raise DynamicResponseInvalid(f"HTTP {response.status_code}")
                    body = bytearray()
                    async for piece in response.aiter_bytes():
                        body += piece
                        if len(body) > MAX_URL_BODY_BYTES:
                            raise DynamicResponseInvalid("answer too large")
            route = parse_dynamic_response(json.loads(body), runner.account.region)
        except (
            UnsafeUrl,
            httpx.HTTPError,
            TimeoutError,
            ValueError,
        ) as exc:
            # DynamicResponseInvalid and JSONDecodeError are ValueErrors too.
            log.warning(
                "dynamic URL failed; using the fallback",
                extra={
                    "call_sid": call.sid,
                    "error": type(exc).__name__,
                    "reason": str(exc)[:120] if isinstance(exc, DynamicResponseInvalid) else None,
                },
            )
            return None
        log.info(
            "dynamic URL answered",
            extra={
                "call_sid": call.sid,
                "targets": len(route.targets),
                "elapsed_ms": round((asyncio.get_running_loop().time() - started) * 1000, 1),
            },
        )
        return route

    async def fetch_audio(self, url: str) -> bytes | None:
        """A WAV for the no-agent message, as PCM; None (use a tone) when it cannot be had."""
        try:
            from callbridge.media.wav import fetch_wav
        except ImportError:
            return None
        transport = PinnedTransport(self.guard, max_connections=1)
        try:
            async with httpx.AsyncClient(transport=transport) as client:
                return await fetch_wav(
                    url,
                    client=client,
                    max_bytes=self.services.settings.media_max_download_bytes,
                    guard=self.guard.check,
                    timeout_s=MESSAGE_FETCH_TIMEOUT_S,
                )
        except Exception as exc:
            log.warning("message audio unusable", extra={"error": type(exc).__name__})
            return None


class InboundRunner(CallRunner):
    """Drives one inbound call from the customer's ring to its terminal status."""

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
        self.bridged_at: float | None = None
        self.media: MediaSession | None = None
        self._hold: Handle | None = None
        self._wake_pending = False
        self.held: set[str] = set()
        self._from_dirty = False
        """Contact URIs this call holds a busy mark (and an in-process claim) on."""

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

    async def commit(self, change: Change) -> None:
        if self._from_dirty:
            self._from_dirty = False
            change.legs.insert(0, self.from_leg)
        await super().commit(change)

    async def _flush(self) -> None:
        if self._from_dirty:
            await self.commit(Change(self._touch()))

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

    # -- routing -------------------------------------------------------------------------

    async def _candidates(self) -> list[Candidate]:
        store = self.engine.store
        if not self.use_static and (self.route is None or self.refetch):
            self.refetch = False
            await self._flush()
            route = await self.service.fetch_route(self)
            if route is None:
                if self.flow.connect.fallback is Fallback.STATIC:
                    self.use_static = True
                else:
                    return []
            else:
                self._apply_route(route)
        if self.use_static:
            async with store.read() as conn:
                return await group_store.static_candidates(
                    conn, self.account.sid, self.flow.connect.destinations
                )
        assert self.route is not None
        async with store.read() as conn:
            return await group_store.dynamic_candidates(conn, self.account.sid, self.route.targets)

    def _apply_route(self, route: DynamicRoute) -> None:
        self.route = route
        options = self.options
        if route.max_ringing_duration_s is not None:
            options = replace(options, attempt_timeout_s=route.max_ringing_duration_s)
        if route.max_conversation_duration_s is not None:
            options = replace(options, max_time_limit_s=route.max_conversation_duration_s)
        if route.record is not None or route.recording_channels is not None:
            recording = options.recording
            if route.record is not None:
                recording = replace(recording, record=route.record)
            if route.recording_channels is not None:
                recording = replace(recording, channels=route.recording_channels)
            options = replace(options, recording=recording)
        self.options = options
        if route.parallel:
            self.strategy = Strategy.SIMULTANEOUS

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
        now = self.now()
        service = self.service
        new: list[Attempt] = []
        self.phase = Phase.RINGING
        try:
            await self._mark_and_insert(ordered, ring_all, new, now)
        except BaseException:
            claimed = [a.leg.contact_uri for a in new if a.candidate.state_managed]
            service.unclaim_all(self.account.sid, claimed)
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
        service.dequeue(self)
        for attempt in new:
            if await self._dial(attempt):
                self.start_timer(f"ring:{attempt.leg.sid}", self.options.attempt_timeout_s)
            else:
                self.disown_leg(attempt.leg.sid)
                await self._attempt_over(attempt, LegOutcome.FAILED, offer_next=False)
        return bool(self.ringing)

    async def _mark_and_insert(
        self, ordered: list[Candidate], ring_all: bool, new: list[Attempt], now: Any
    ) -> None:
        service = self.service
        async with self.engine.store.tx() as conn:
            for candidate in ordered[: MAX_ATTEMPTS_PER_CALL - len(self.attempts)]:
                self.tried.add(candidate.key)
                claim = (self.account.sid, candidate.contact_uri)
                if candidate.state_managed:
                    if not service.claim(claim):
                        self.skipped[candidate.key] = (candidate, SkipReason.BUSY)
                        continue
                    try:
                        got = await flow_store.try_mark_busy(
                            conn,
                            account_sid=self.account.sid,
                            contact_uri=candidate.contact_uri,
                            call_sid=self.call.sid,
                            owner_node=self.engine.node_id,
                            now=now,
                        )
                    except BaseException:
                        service.unclaim(claim)
                        raise
                    if not got:
                        # Taken since the snapshot (e.g. a click-to-call, another node).
                        service.unclaim(claim)
                        self.skipped[candidate.key] = (candidate, SkipReason.BUSY)
                        continue
                leg = Leg(
                    sid=new_sid(),
                    call_sid=self.call.sid,
                    side=LegSide.TO,
                    seq=len(self.attempts) + len(new) + 1,
                    contact_uri=candidate.contact_uri,
                    name=candidate.name,
                    status=LegStatus.QUEUED,
                    created_at=now,
                    updated_at=now,
                    group_id=candidate.group_id,
                    group_name=candidate.group_name,
                )
                new.append(Attempt(leg, candidate))
                if not ring_all:
                    break
            if new:
                self.call = self._touch()
                await call_store.update_call(conn, self.call)
                if self._from_dirty:
                    await call_store.update_leg(conn, self.from_leg)
                for attempt in new:
                    await call_store.insert_leg(conn, attempt.leg)
        if new:
            self._from_dirty = False

    async def _dial(self, attempt: Attempt) -> bool:
        try:
            await self.driver.dial(
                DialRequest(
                    leg_sid=attempt.leg.sid,
                    call_sid=self.call.sid,
                    account_sid=self.call.account_sid,
                    contact_uri=attempt.leg.contact_uri,
                    caller_id=self.call.virtual_number,
                    ring_timeout_s=self.options.attempt_timeout_s,
                )
            )
        except DriverError as exc:
            log.warning(
                "dial failed",
                extra={"call_sid": self.call.sid, "leg": attempt.leg.sid, "error": str(exc)},
            )
            return False
        return True

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
        self.service.enqueue(self)
        self.start_timer("queue_poll", self.flow.no_agent.retry_interval_s)

    def wake(self) -> None:
        """Look for a free agent soon (called when an agent may have freed up)."""
        if self.phase is Phase.QUEUED and not self._wake_pending:
            self._wake_pending = True
            self.post(TimerFired("queue_poll"))

    async def _message_then_end(self) -> None:
        self.phase = Phase.MESSAGE
        self.service.dequeue(self)
        self.cancel_timer("queue_poll")
        self.cancel_timer("max_wait")
        self._stop_hold()
        no_agent = self.flow.no_agent
        pcm: bytes | None = None
        if no_agent.message_url:
            pcm = await self.service.fetch_audio(no_agent.message_url)
        duration_s = float(no_agent.message_s)
        if pcm is not None:
            duration_s = min(len(pcm) / (2 * SAMPLE_RATE), MAX_MESSAGE_S)
        elif duration_s > 0:
            pcm = tone(duration_s)
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
        await self.commit(
            Change(call, legs=[attempt.leg, *[a.leg for a in losers]], event=CallbackEvent.ANSWERED)
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
        self.service.agent_freed(self.account.sid)
        if not offer_next or self.ringing or self.phase is not Phase.RINGING:
            return
        self.phase = Phase.ROUTING
        self.refetch = not self.use_static and bool(self.route and self.route.fetch_after_attempt)
        await self._offer()

    async def _release(self, candidates: list[Candidate], *, cooldown: bool) -> None:
        uris = [c.contact_uri for c in candidates if c.state_managed]
        self.service.unclaim_all(self.account.sid, [u for u in uris if u in self.held])
        self.held.difference_update(uris)
        cooldown_s = self.flow.connect.cooldown_s
        cooling = [c.user_id for c in candidates if c.user_id] if cooldown and cooldown_s else []
        if not uris and not cooling:
            return
        now = self.now()
        async with self.engine.store.tx() as conn:
            await flow_store.release_marks(conn, self.account.sid, uris, self.call.sid)
            await user_store.apply_pending_availability(conn, self.account.sid, uris, now)
            if cooling:
                until = now + timedelta(seconds=cooldown_s)
                await flow_store.set_cooldown(conn, cooling, until, now)

    async def _digits(self, event: LegEvent) -> None:
        if not event.digits:
            return
        self.call = replace(self.call, digits=(self.call.digits or "") + event.digits)
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
            self.service.dequeue(self)
            self.finished = True

    async def _finish(self) -> None:
        self.phase = Phase.ENDED
        self.service.dequeue(self)
        self.cancel_all_timers()
        self._stop_hold()
        now = self.now()
        legs = [self._final_from_leg(now)]
        for attempt in self.attempts:
            if attempt.leg.status is LegStatus.IN_PROGRESS:
                attempt.leg = set_leg_status(attempt.leg, LegStatus.COMPLETED, now, ended_at=now)
            elif not attempt.leg.status.is_final:
                attempt.outcome = LegOutcome.CANCELED
                attempt.leg = set_leg_status(attempt.leg, LegStatus.CANCELED, now, ended_at=now)
            legs.append(attempt.leg)
        outcomes = [a.outcome or LegOutcome.FAILED for a in self.attempts]
        status = derive_inbound_status(outcomes, self.customer_left)
        new_legs = self._skipped_history(now) if not self.attempts else []
        talk_s = 0.0
        if self.bridged_at is not None:
            talk_s = max(0.0, self.clock.monotonic() - self.bridged_at)
        recordings: tuple[str, ...] = ()
        if self.media is not None:
            results = await self.media.finish()
            if results and self.engine.save_recordings is not None:
                try:
                    recordings = tuple(await self.engine.save_recordings(self.call, results))
                except Exception:
                    log.exception("saving recordings failed", extra={"call_sid": self.call.sid})
        if self.winner is not None and self.winner.candidate.user_id is not None:
            async with self.engine.store.tx() as conn:
                await flow_store.set_last_call_ended(conn, [self.winner.candidate.user_id], now)
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
        self.service.unclaim_all(self.account.sid, list(self.held))
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

    def _final_from_leg(self, now: Any) -> Leg:
        leg = self.from_leg
        if leg.status.is_final:
            return leg
        if leg.status is LegStatus.IN_PROGRESS:
            self.from_leg = set_leg_status(leg, LegStatus.COMPLETED, now, ended_at=now)
        else:
            self.from_leg = set_leg_status(leg, LegStatus.CANCELED, now, ended_at=now)
        return self.from_leg

    def _skipped_history(self, now: Any) -> list[Leg]:
        """Nobody could be dialled: record who was skipped and why, as `to` legs."""
        legs: list[Leg] = []
        for candidate, reason in self.skipped.values():
            legs.append(
                Leg(
                    sid=new_sid(),
                    call_sid=self.call.sid,
                    side=LegSide.TO,
                    seq=len(legs) + 1,
                    contact_uri=candidate.contact_uri or "",
                    name=candidate.name,
                    status=skipped_leg_status(reason),
                    created_at=now,
                    updated_at=now,
                    ended_at=now,
                    group_id=candidate.group_id,
                    group_name=candidate.group_name,
                )
            )
        return legs

    def _touch(self, **changes: Any) -> Call:
        return replace(self.call, updated_at=self.now(), **changes)


StartInbound = Callable[[str, str], Any]


def install(services: Services) -> None:
    """Wire inbound call handling into a running app (driver handler, sim entry point)."""
    service = InboundService(services)
    services.extras["inbound"] = service
    services.extras["start_inbound"] = service.start_inbound
    driver = services.driver
    if isinstance(driver, InboundCapable):
        driver.set_incoming_handler(service.on_incoming)
