"""Inbound calls: `install` wires the driver's incoming handler and the sim entry point to an
`InboundService`, which admits each call to an ExoPhone and starts its `InboundRunner`.

The customer is the `from` leg; each agent offered the call gets a `to` leg, in order. An agent
is marked busy (the same compare-and-set registry click-to-call uses) when they start ringing,
freed if they do not answer, and stays busy while talking, so inbound and outbound never
offer one agent two calls. The modules: `inbound_runner` (routing and events of one call),
`inbound_call` (its state, bridging and ending), `inbound_agents` (claims, busy marks, agent
legs), `inbound_flow_url` (dynamic URL) and `inbound_queue` (waiting callers, hold and message).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.domain.calls import Call, CallState, Direction, Leg, LegSide, LegStatus
from callbridge.domain.flows import FlowDefinition
from callbridge.domain.options import CallOptions
from callbridge.errors import (
    CallbridgeError,
    NodeNotLeased,
    ServiceUnavailable,
    VirtualNumberNotFound,
)
from callbridge.ids import new_sid
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store import accounts as account_store
from callbridge.store import calls as call_store
from callbridge.store import flows as flow_store
from callbridge.store import nodes as node_store
from callbridge.telephony.base import DriverError, InboundCapable, IncomingCall
from callbridge.webhooks.ssrf import UrlGuard

from .core import CallEngine
from .inbound_agents import AgentClaims
from .inbound_queue import WaitingQueue
from .inbound_runner import InboundRunner

if TYPE_CHECKING:
    from callbridge.api.services import Services

log = logging.getLogger(__name__)


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
    the round-robin cursor of each flow, agent claims and the callers waiting in queue."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.engine: CallEngine = services.engine
        self.guard: UrlGuard = services.guard
        self.max_download_bytes = services.settings.media_max_download_bytes
        self.claims = AgentClaims()
        self.queue = WaitingQueue()
        self._round_robin: dict[str, str] = {}
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.engine.add_listener(self._on_committed)

    # -- entry points ----------------------------------------------------------------------

    async def start_inbound(
        self, from_number: str, to_exophone: str, account_sid: str | None = None
    ) -> str:
        """The simulated carrier's `POST /sim/v1/incoming`: a customer calls an ExoPhone (of
        `account_sid` when given: another account's ExoPhone is not found, like any number)."""
        number = dialled_number(to_exophone)
        async with self.services.store.read() as conn:
            phone = await account_store.exophone_by_number(conn, number)
        if phone is None or (account_sid is not None and phone.account_sid != account_sid):
            raise VirtualNumberNotFound(f"{number} is not an ExoPhone")
        sim = self.services.sim
        if sim is None:
            raise ServiceUnavailable("the simulated carrier is not running")
        leg_sid = new_sid()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[leg_sid] = future
        try:
            try:
                sim.place_incoming(leg_sid, from_number.strip(), number, phone.account_sid)
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
        engine.check_admitting()
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

        owner = engine.node_id

        async def write(conn: AsyncConnection) -> None:
            if not await node_store.is_live(conn, owner):
                raise NodeNotLeased()
            await call_store.insert_call(conn, call, options, owner)
            await call_store.insert_leg(conn, from_leg)

        await engine.transaction(write)
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

    @property
    def queued_calls(self) -> int:
        return len(self.queue)

    def _on_committed(self, call: Call) -> None:
        if call.state is CallState.TERMINAL:
            self.queue.agent_freed(call.account_sid)


def install(services: Services) -> None:
    """Wire inbound call handling into a running app (driver handler, sim entry point)."""
    service = InboundService(services)
    services.extras["inbound"] = service
    services.extras["start_inbound"] = service.start_inbound
    driver = services.driver
    if isinstance(driver, InboundCapable):
        driver.set_incoming_handler(service.on_incoming)
