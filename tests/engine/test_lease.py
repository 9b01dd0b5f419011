"""This node's lease: a renewal in doubt refuses new calls, a lost lease ends every call the node
runs (hanging up their legs) and the node rejoins under a new id; several reconcilers racing on
a dead node's calls end each of them exactly once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select, update

from callbridge.clock import ManualClock
from callbridge.domain.calls import Call, CallState, Direction, Leg, LegSide, LegStatus
from callbridge.domain.options import CallbackEvent, CallOptions, StatusCallback
from callbridge.engine.lease import LeaseState, NodeLease
from callbridge.engine.reconciler import Reconciler
from callbridge.ids import new_sid
from callbridge.store import busy as busy_store
from callbridge.store import calls as call_store
from callbridge.store import nodes as node_store
from callbridge.store.repo import Store
from callbridge.store.tables import busy_marks, calls, nodes, outbox
from callbridge.telephony.sim import PhoneState

from ..harness import AGENT, CUSTOMER, Harness, running_app
from ..v1.support import connect, rest_exception

HOOK = "http://127.0.0.1:9/hook"
UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
"""A database nothing listens for: every renewal through it fails at once."""


async def bridged_call(h: Harness) -> str:
    r = await h.create_call(status_callback=[{"event": "terminal", "url": HOOK}])
    assert r.status_code == 200, r.text
    sid: str = r.json()["response"]["call_details"]["sid"]
    await h.advance(3)
    assert h.sim.phone_state(AGENT) is PhoneState.IN_CALL
    return sid


async def terminal_rows(store: Store, sid: str) -> int:
    async with store.read() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(outbox)
            .where(outbox.c.call_sid == sid, outbox.c.event_type == "terminal")
        )
    return int(count or 0)


async def test_node_declared_dead_ends_its_calls_and_rejoins_under_a_new_id(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        lease: NodeLease = h.services.extras["lease"]
        first_id = lease.node_id
        sid = await bridged_call(h)
        async with store.tx() as conn:  # a peer declares this node dead
            await conn.execute(
                update(nodes).where(nodes.c.id == first_id).values(dead_at=clock.now())
            )
        await lease.renew()
        assert lease.state is LeaseState.VALID and lease.node_id != first_id
        assert lease.rejoins == 1
        details = await h.call(sid)
        assert (details["state"], details["status"]) == ("terminal", "completed")
        assert h.sim.phone_state(AGENT) is PhoneState.IDLE
        assert h.sim.phone_state(CUSTOMER) is PhoneState.IDLE
        assert await terminal_rows(store, sid) == 1
        # New calls belong to the new id; the old row goes once its calls are all ended.
        r = await h.create_call()
        assert r.status_code == 200
        async with store.read() as conn:
            owner = await conn.scalar(
                select(calls.c.owner_node).where(
                    calls.c.sid == r.json()["response"]["call_details"]["sid"]
                )
            )
        assert owner == lease.node_id
        await h.services.extras["reconciler"].reconcile_once()
        async with store.read() as conn:
            states = await node_store.lease_states(conn, clock.now(), lease.ttl_s)
            assert states == ([lease.node_id], [])
            assert await node_store.dead_heartbeats(conn) == {}


async def test_renewals_in_doubt_refuse_new_calls_with_503_until_one_succeeds(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        lease: NodeLease = h.services.extras["lease"]
        real_store = lease.store
        lease.store = Store(UNREACHABLE)
        try:
            await clock.advance(lease.ttl_s / 2)
            await lease.renew()
        finally:
            await lease.store.close()
            lease.store = real_store
        assert lease.state is LeaseState.DOUBTFUL
        r = await h.create_call()
        assert (r.status_code, r.headers["retry-after"]) == (503, "1")
        error = r.json()["response"]["error_data"]
        assert error["code"] == 503 and "cannot renew its lease" in error["message"]
        v1 = await connect(h)  # the v1 dialect says the same in its own shape
        assert (v1.status_code, v1.headers["retry-after"]) == (503, "1")
        assert rest_exception(v1)["Code"] == 503
        async with store.read() as conn:
            assert await conn.scalar(select(func.count()).select_from(busy_marks)) == 0
            assert await conn.scalar(select(func.count()).select_from(calls)) == 0
        await lease.renew()
        assert lease.state is LeaseState.VALID
        assert (await h.create_call()).status_code == 200


async def test_lease_unrenewed_for_the_whole_ttl_ends_the_calls_before_peers_may(
    store: Store, clock: ManualClock
) -> None:
    async with running_app(store, clock) as h:
        lease: NodeLease = h.services.extras["lease"]
        first_id = lease.node_id
        sid = await bridged_call(h)
        real_store = lease.store
        lease.store = Store(UNREACHABLE)
        await clock.advance(lease.ttl_s)
        ended = asyncio.Event()
        h.services.engine.add_listener(
            lambda call: ended.set() if call.state is CallState.TERMINAL else None
        )
        renewal = asyncio.create_task(lease.renew())
        # The node ends its calls at once, then keeps trying to rejoin.
        async with asyncio.timeout(10):
            await ended.wait()
        assert (await h.call(sid))["state"] == "terminal"
        assert lease.state is LeaseState.LOST and not lease.admitting
        assert h.sim.phone_state(AGENT) is PhoneState.IDLE
        refused = await h.create_call()
        assert refused.status_code == 503
        assert "re-joining the cluster" in refused.json()["response"]["error_data"]["message"]
        await lease.store.close()
        lease.store = real_store
        while not renewal.done():
            await clock.advance(lease.interval_s)
        await renewal
        assert lease.state is LeaseState.VALID and lease.node_id != first_id
        assert await terminal_rows(store, sid) == 1
        assert (await h.create_call()).status_code == 200


def _orphan(index: int, now_offset_s: float, clock: ManualClock) -> tuple[Call, Leg]:
    now = clock.now() - timedelta(seconds=now_offset_s)
    agent = f"+91990001{index:04d}"
    call = Call(
        sid=new_sid(),
        account_sid="acme",
        direction=Direction.OUTBOUND,
        virtual_number="+912241499102",
        from_uri=agent,
        to_uri=CUSTOMER,
        state=CallState.ACTIVE,
        status=None,
        created_at=now,
        updated_at=now,
        start_at=now,
    )
    leg = Leg(new_sid(), call.sid, LegSide.FROM, 1, agent, None, LegStatus.RINGING, now, now)
    return call, leg


async def test_reconcilers_on_several_nodes_end_each_orphan_exactly_once(
    store: Store, clock: ManualClock, database_url: str
) -> None:
    orphans = 150
    async with running_app(store, clock):
        options = CallOptions(
            state_management=True,
            status_callbacks=(
                StatusCallback(CallbackEvent.TERMINAL, HOOK),
                StatusCallback(CallbackEvent.TERMINAL, HOOK + "/2"),
            ),
        )
        async with store.tx() as conn:
            await node_store.register_node(conn, "ghost", clock.now() - timedelta(seconds=60), {})
            for i in range(orphans):
                call, leg = _orphan(i, 30, clock)
                await call_store.insert_call(conn, call, options, "ghost")
                await call_store.insert_leg(conn, leg)
                await busy_store.mark_busy(
                    conn,
                    account_sid="acme",
                    contact_uri=call.from_uri,
                    call_sid=call.sid,
                    owner_node="ghost",
                    now=call.created_at,
                )
        # Three reconcilers, each with its own connections, racing in small batches.
        stores = [Store(database_url) for _ in range(3)]
        try:
            reconcilers = []
            for i, own in enumerate(stores):
                lease = NodeLease(store=own, clock=clock, ttl_s=8, interval_s=2, node_id=f"peer{i}")
                await lease.register()
                reconcilers.append(
                    Reconciler(
                        store=own,
                        clock=clock,
                        lease=lease,
                        reconcile_interval_s=2,
                        batch_size=10,
                    )
                )
            ended = await asyncio.gather(*(r.reconcile_once() for r in reconcilers))
        finally:
            for own in stores:
                await own.close()
        assert sum(ended) == orphans
        async with store.read() as conn:
            states = (
                await conn.execute(select(calls.c.state, func.count()).group_by(calls.c.state))
            ).all()
            per_url = (
                await conn.execute(
                    select(outbox.c.call_sid, outbox.c.url, func.count())
                    .where(outbox.c.event_type == "terminal")
                    .group_by(outbox.c.call_sid, outbox.c.url)
                )
            ).all()
            marks = await conn.scalar(select(func.count()).select_from(busy_marks))
        assert dict(states) == {"terminal": orphans}
        assert len(per_url) == orphans * 2 and {n for _, _, n in per_url} == {1}
        assert marks == 0
