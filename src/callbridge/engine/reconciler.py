"""Ending the calls and freeing the busy marks of nodes that died.

Every pass, any node may declare dead a node whose heartbeat is older than the lease TTL (one
conditional update, see `store/nodes.py`). The calls of dead or unknown owners are then ended in
bounded batches: each batch locks its calls (SKIP LOCKED on PostgreSQL, so reconcilers on
several nodes share the work instead of repeating it), and each call is ended by one
conditional update — only while it is still active and still owned by the dead node — so
exactly one writer ends it and only that writer frees its marks and queues its terminal
callback. Legs that were still ringing or talking become `failed`/`completed` at the dead
node's last heartbeat. The node's own lease is kept by `engine/lease.py`, on its own task.
"""

from __future__ import annotations

import asyncio
import logging
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
from callbridge.store.bulk import update_rows
from callbridge.store.repo import Store
from callbridge.store.tables import legs as legs_table
from callbridge.tasks import cancel_and_wait

from .lease import NodeLease
from .writes import LEG_UPDATE_COLUMNS, leg_update_row

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


class Reconciler:
    """Periodically ends dead nodes' calls and frees their marks."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        lease: NodeLease,
        reconcile_interval_s: float,
        batch_size: int = call_store.ORPHAN_BATCH,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease = lease
        self.reconcile_interval_s = reconcile_interval_s
        self.batch_size = batch_size
        self.on_committed = on_committed
        self._task: asyncio.Task[None] | None = None
        self.calls_ended = 0

    def start(self) -> None:
        """Reconcile now (a restarted node frees its previous life's agents at once), then
        every `reconcile_interval_s`. The lease is renewed by its own task meanwhile."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="reconciler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling dead nodes failed")
            await self.clock.sleep(self.reconcile_interval_s)

    async def reconcile_once(self) -> int:
        """Declare silent nodes dead, end their calls and free their marks; returns calls ended."""
        now = self.clock.now()
        async with self.store.tx() as conn:
            declared = await node_store.declare_dead(
                conn, now=now, ttl_s=self.lease.ttl_s, except_node=self.lease.node_id
            )
        if declared:
            log.warning("nodes declared dead", extra={"dead_nodes": ",".join(declared)})
        ended = 0
        while True:
            count, full = await self._end_orphan_batch()
            ended += count
            if not full:
                break
            await asyncio.sleep(0)  # let the node's own calls and requests run between batches
        async with self.store.tx() as conn:
            freed = await busy_store.release_marks_of_dead_owners(conn)
            await busy_store.after_marks_freed(conn, freed, now)
            forgotten = await node_store.forget_finished_dead(conn)
        if ended or freed or forgotten:
            log.warning(
                "reconciled dead nodes",
                extra={"calls_ended": ended, "marks_freed": len(freed), "nodes_removed": forgotten},
            )
        self.calls_ended += ended
        return ended

    async def _end_orphan_batch(self) -> tuple[int, bool]:
        """End one batch of orphaned calls in one transaction; (calls ended, batch was full)."""
        async with self.store.tx() as conn:
            batch = await call_store.lock_orphan_calls(conn, self.batch_size)
            if not batch:
                return 0, False
            now = self.clock.now()
            last_beats = await node_store.dead_heartbeats(conn)
            all_legs = await call_store.legs_of_calls(conn, [call.sid for call, _, _ in batch])
            timezones: dict[str, str] = {}
            ended_legs: list[Leg] = []
            events: list[outbox_store.EventToEnqueue] = []
            won: list[Call] = []
            for call, owner, options in batch:
                ended_at = last_beats.get(owner or "", now)
                final_call, final_legs = orphan_final_state(call, all_legs[call.sid], ended_at)
                if not await call_store.end_if_owned(conn, final_call, owner):
                    continue
                won.append(final_call)
                ended_legs += final_legs
                log.warning(
                    "orphaned call ended",
                    extra={
                        "call_sid": call.sid,
                        "owner": owner,
                        "node": self.lease.node_id,
                        "status": final_call.status,
                    },
                )
                if not options.status_callbacks:
                    continue
                if call.account_sid not in timezones:
                    account = await account_store.get_account(conn, call.account_sid)
                    timezones[call.account_sid] = account.timezone if account else "Asia/Kolkata"
                events.append(
                    outbox_store.EventToEnqueue(
                        account_sid=call.account_sid,
                        call_sid=call.sid,
                        event_type=CallbackEvent.TERMINAL,
                        callbacks=options.status_callbacks,
                        call_details=callback_details(
                            final_call,
                            final_legs,
                            timezones[call.account_sid],
                            v2_agent=options.v2_agent,
                            v1=options.v1,
                        ),
                        now=final_call.updated_at,
                    )
                )
            await update_rows(
                conn,
                legs_table,
                "sid",
                LEG_UPDATE_COLUMNS,
                [leg_update_row(leg) for leg in ended_legs],
            )
            if won:
                await busy_store.release_marks_of_calls(
                    conn, [c.sid for c in won], max(c.updated_at for c in won)
                )
            await outbox_store.enqueue_events_many(conn, events)
        if events and self.on_committed is not None:
            self.on_committed()
        # A full batch means more may wait; one where nothing was won cannot repeat forever.
        return len(won), len(batch) == self.batch_size and bool(won)
