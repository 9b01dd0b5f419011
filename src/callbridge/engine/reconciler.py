"""Leases: this node's heartbeat, and ending the calls and busy marks of nodes that died.

A node renews its heartbeat every `heartbeat_interval_s`. Any node that finds another node
silent for longer than `lease_ttl_s` ends that node's active calls as failed (legs that were
still ringing or talking become `failed`/`completed` at the dead node's last heartbeat),
frees their busy marks and queues their terminal callbacks, all in one transaction per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from callbridge.clock import Clock
from callbridge.domain.calls import (
    Call,
    CallState,
    Direction,
    Leg,
    LegOutcome,
    LegSide,
    LegStatus,
    derive_inbound_status,
    derive_outbound_status,
)
from callbridge.domain.options import CallbackEvent
from callbridge.domain.views import callback_details
from callbridge.store import accounts as account_store
from callbridge.store import busy as busy_store
from callbridge.store import calls as call_store
from callbridge.store import nodes as node_store
from callbridge.store import outbox as outbox_store
from callbridge.store import users as user_store
from callbridge.store.repo import Store

log = logging.getLogger(__name__)


def orphan_final_state(call: Call, legs: list[Leg], ended_at: datetime) -> tuple[Call, list[Leg]]:
    """The terminal call and legs for a call whose owner died (pure)."""
    final_legs: list[Leg] = []
    outcomes: dict[str, LegOutcome] = {}
    talk_s = 0.0
    for leg in legs:
        at = max(ended_at, leg.updated_at)
        if leg.status is LegStatus.IN_PROGRESS:
            final = replace(leg, status=LegStatus.COMPLETED, updated_at=at, ended_at=at)
            outcomes[leg.sid] = LegOutcome.ANSWERED
        elif not leg.status.is_final:
            final = replace(leg, status=LegStatus.FAILED, updated_at=at, ended_at=at)
            outcomes[leg.sid] = LegOutcome.FAILED
        else:
            final = leg
            outcomes[leg.sid] = (
                LegOutcome.ANSWERED if leg.answered_at is not None else _outcome_of(leg.status)
            )
        final_legs.append(final)
    from_legs = [leg for leg in legs if leg.side is LegSide.FROM]
    to_legs = [leg for leg in legs if leg.side is LegSide.TO]
    if call.direction is Direction.OUTBOUND:
        from_outcome = outcomes[from_legs[0].sid] if from_legs else LegOutcome.FAILED
        to_outcome = outcomes[to_legs[-1].sid] if to_legs else None
        status = derive_outbound_status(from_outcome, to_outcome)
        answered = [leg for leg in to_legs if leg.answered_at is not None]
    else:
        status = derive_inbound_status([outcomes[leg.sid] for leg in to_legs], False)
        answered = [leg for leg in to_legs if leg.answered_at is not None]
    for leg in answered:
        assert leg.answered_at is not None
        talk_s += max(0.0, (ended_at - leg.answered_at).total_seconds())
    end_at = max(ended_at, call.updated_at)
    final_call = replace(
        call,
        state=CallState.TERMINAL,
        status=status,
        end_at=end_at,
        updated_at=end_at,
        talk_time_s=(call.talk_time_s or 0.0) if not answered else talk_s,
    )
    return final_call, final_legs


def _outcome_of(status: LegStatus) -> LegOutcome:
    return {
        LegStatus.BUSY: LegOutcome.BUSY,
        LegStatus.NO_ANSWER: LegOutcome.NO_ANSWER,
        LegStatus.CANCELED: LegOutcome.CANCELED,
    }.get(status, LegOutcome.FAILED)


def new_node_id() -> str:
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{os.urandom(3).hex()}"


class Reconciler:
    """Keeps this node's lease alive and cleans up after dead nodes."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        node_id: str,
        lease_ttl_s: float,
        heartbeat_interval_s: float,
        reconcile_interval_s: float,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.node_id = node_id
        self.lease_ttl_s = lease_ttl_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reconcile_interval_s = reconcile_interval_s
        self.on_committed = on_committed
        self._tasks: list[asyncio.Task[None]] = []
        self.calls_ended = 0

    async def register(self) -> None:
        async with self.store.tx() as conn:
            await node_store.register_node(
                conn, self.node_id, self.clock.now(), {"pid": os.getpid()}
            )

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self.heartbeat_interval_s, self.heartbeat)),
            asyncio.create_task(self._loop(self.reconcile_interval_s, self.reconcile_once)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        async with self.store.tx() as conn:
            await node_store.remove_node(conn, self.node_id)

    async def _loop(self, interval_s: float, step: object) -> None:
        assert callable(step)
        while True:
            await self.clock.sleep(interval_s)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease maintenance failed")

    async def heartbeat(self) -> None:
        async with self.store.tx() as conn:
            alive = await node_store.heartbeat(conn, self.node_id, self.clock.now())
            if not alive:
                # Another node declared us dead (we stalled past the TTL) and ended our
                # calls; rejoin so that new calls are leased again.
                log.error("lease lost; re-registering node", extra={"node": self.node_id})
                await node_store.register_node(
                    conn, self.node_id, self.clock.now(), {"pid": os.getpid()}
                )

    async def reconcile_once(self) -> int:
        """End calls of dead or unknown owners and free their marks; returns calls ended."""
        now = self.clock.now()
        async with self.store.read() as conn:
            live, dead = await node_store.live_and_dead_nodes(conn, now, self.lease_ttl_s)
            if self.node_id not in live:
                live.append(self.node_id)
            orphans = await call_store.active_calls_without_live_owner(conn, live)
        ended = 0
        for call, owner in orphans:
            ended += await self._end_orphan(call, dead.get(owner or "", now))
        async with self.store.tx() as conn:
            freed_pairs = await busy_store.release_orphan_marks(conn, live)
            by_account: dict[str, list[str]] = {}
            for account_sid, uri in freed_pairs:
                by_account.setdefault(account_sid, []).append(uri)
            for account_sid, uris in by_account.items():
                await user_store.apply_pending_availability(conn, account_sid, uris, now)
            freed = len(freed_pairs)
            for node_id in dead:
                await node_store.remove_node(conn, node_id)
        if ended or freed:
            log.warning(
                "reconciled dead nodes",
                extra={"calls_ended": ended, "marks_freed": freed, "dead_nodes": len(dead)},
            )
        self.calls_ended += ended
        return ended

    async def _end_orphan(self, call: Call, ended_at: datetime) -> int:
        async with self.store.tx() as conn:
            current = await call_store.get_call(conn, call.account_sid, call.sid)
            if current is None or current.state is CallState.TERMINAL:
                return 0
            legs = await call_store.get_legs(conn, call.sid)
            final_call, final_legs = orphan_final_state(current, legs, ended_at)
            await call_store.update_call(conn, final_call)
            for leg in final_legs:
                await call_store.update_leg(conn, leg)
            freed = await busy_store.release_call_marks(conn, call.sid)
            await user_store.apply_pending_availability(
                conn, call.account_sid, [uri for _, uri in freed], final_call.updated_at
            )
            options = await call_store.get_call_options(conn, call.sid)
            account = await account_store.get_account(conn, call.account_sid)
            if options is not None and options.status_callbacks and account is not None:
                await outbox_store.enqueue_events(
                    conn,
                    account_sid=call.account_sid,
                    call_sid=call.sid,
                    event_type=CallbackEvent.TERMINAL,
                    callbacks=options.status_callbacks,
                    call_details=callback_details(
                        final_call,
                        final_legs,
                        account.timezone,
                        v2_agent=options.v2_agent,
                        v1=options.v1,
                    ),
                    now=final_call.updated_at,
                )
        if self.on_committed is not None:
            self.on_committed()
        return 1
