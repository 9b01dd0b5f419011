"""Leases: a dead node's calls are ended as failed and its agents freed; live nodes' are not."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from callbridge.clock import ManualClock
from callbridge.domain.calls import Call, CallState, Direction, Leg, LegSide, LegStatus
from callbridge.domain.options import CallbackEvent, CallOptions, StatusCallback
from callbridge.engine.reconciler import Reconciler
from callbridge.store import busy as busy_store
from callbridge.store import calls as call_store
from callbridge.store import nodes as node_store
from callbridge.store.repo import Store
from callbridge.store.tables import busy_marks, outbox

from ..harness import AGENT, AGENT_2, CUSTOMER, running_app


async def orphan_call(
    store: Store, clock: ManualClock, owner: str, agent: str, *, bridged: bool
) -> str:
    now = clock.now()
    call = Call(
        sid=f"{owner[:4]}{agent[-4:]}".ljust(32, "0"),
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
    options = CallOptions(
        state_management=True,
        status_callbacks=(StatusCallback(CallbackEvent.TERMINAL, "http://127.0.0.1:9/hook"),),
    )
    legs = [
        Leg(
            call.sid[:31] + "a",
            call.sid,
            LegSide.FROM,
            1,
            agent,
            None,
            LegStatus.IN_PROGRESS,
            now,
            now,
            answered_at=now,
        ),
        Leg(
            call.sid[:31] + "b",
            call.sid,
            LegSide.TO,
            1,
            CUSTOMER,
            None,
            LegStatus.IN_PROGRESS if bridged else LegStatus.RINGING,
            now,
            now,
            answered_at=now if bridged else None,
        ),
    ]
    async with store.tx() as conn:
        await call_store.insert_call(conn, call, options, owner)
        for leg in legs:
            await call_store.insert_leg(conn, leg)
        await busy_store.mark_busy(
            conn,
            account_sid="acme",
            contact_uri=agent,
            call_sid=call.sid,
            owner_node=owner,
            now=now,
        )
    return call.sid


async def test_dead_nodes_calls_end_and_agents_are_freed(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        async with store.tx() as conn:
            await node_store.register_node(conn, "ghost", clock.now() - timedelta(seconds=60), {})
            await node_store.register_node(conn, "alive", clock.now(), {})
        dead_sid = await orphan_call(store, clock, "ghost", AGENT, bridged=True)
        live_sid = await orphan_call(store, clock, "alive", AGENT_2, bridged=False)
        await clock.advance(10)
        reconciler: Reconciler = h.services.extras["reconciler"]
        async with store.tx() as conn:
            await node_store.heartbeat(conn, "alive", clock.now())
        assert await reconciler.reconcile_once() == 1
        dead = await h.call(dead_sid)
        assert (dead["state"], dead["status"]) == ("terminal", "completed")
        assert dead["total_talk_time"] == 0
        legs = await h.legs(dead_sid)
        assert [leg["status"] for leg in legs["to"]] == ["completed"]
        live = await h.call(live_sid)
        assert live["state"] == "active"
        async with store.read() as conn:
            marks = (await conn.execute(select(busy_marks.c.contact_uri))).scalars().all()
            events = (await conn.execute(select(outbox.c.call_sid, outbox.c.event_type))).all()
            live, expired = await node_store.lease_states(
                conn, clock.now(), h.services.settings.lease_ttl_s
            )
            dead_nodes = await node_store.dead_heartbeats(conn)
        assert marks == [AGENT_2]
        assert events == [(dead_sid, "terminal")]
        assert "ghost" not in live + expired and "ghost" not in dead_nodes
        # The freed agent can take a call at once.
        assert (await h.create_call(from_uri=AGENT)).status_code == 200


async def test_ringing_orphan_ends_as_to_leg_no_dial(store: Store, clock: ManualClock) -> None:
    async with running_app(store, clock) as h:
        async with store.tx() as conn:
            await node_store.register_node(conn, "ghost", clock.now(), {})
        sid = await orphan_call(store, clock, "ghost", AGENT, bridged=False)
        await clock.advance(30)
        assert await h.services.extras["reconciler"].reconcile_once() == 1
        details = await h.call(sid)
        assert details["status"] == "to_leg_no_dial"
        legs = await h.legs(sid)
        assert [leg["status"] for leg in legs["from"]] == ["completed"]
        assert [leg["status"] for leg in legs["to"]] == ["failed"]
        assert details["end_time"] == "2026-01-15 12:00:00+05:30"


async def test_a_call_taken_over_by_another_node_is_not_overwritten(
    store: Store, clock: ManualClock
) -> None:
    """If this node stalled past its lease and a survivor ended its call, the late runner's
    commits must not bring the call back to life."""
    from sqlalchemy import update

    from callbridge.store.tables import calls

    async with running_app(store, clock) as h:
        h.phone(CUSTOMER, "manual")
        r = await h.create_call()
        sid = r.json()["response"]["call_details"]["sid"]
        await h.advance(3)
        async with store.tx() as conn:
            await conn.execute(
                update(calls)
                .where(calls.c.sid == sid)
                .values(state="terminal", status="to_leg_no_dial")
            )
        h.sim.act(CUSTOMER, "answer")
        await h.advance(5)
        details = await h.call(sid)
        assert (details["state"], details["status"]) == ("terminal", "to_leg_no_dial")


async def test_a_dead_nodes_mark_stays_while_its_call_is_still_active(
    store: Store, clock: ManualClock
) -> None:
    """Another reconciler may be ending the call (its batch locked, not yet committed): the
    sweep of dead owners' marks must leave the agent busy until that writer ends the call."""
    from sqlalchemy import update

    from callbridge.store.tables import calls

    async with running_app(store, clock) as h:
        async with store.tx() as conn:
            await node_store.register_node(conn, "ghost", clock.now() - timedelta(seconds=60), {})
        sid = await orphan_call(store, clock, "ghost", AGENT, bridged=True)
        async with store.tx() as conn:
            declared = await node_store.declare_dead(
                conn, now=clock.now(), ttl_s=8, except_node=h.services.engine.node_id
            )
            assert declared == ["ghost"]
            assert await busy_store.release_marks_of_dead_owners(conn) == []
        async with store.tx() as conn:
            await conn.execute(
                update(calls).where(calls.c.sid == sid).values(state=CallState.TERMINAL.value)
            )
            assert await busy_store.release_marks_of_dead_owners(conn) == [("acme", AGENT)]
        async with store.read() as conn:
            assert (await conn.execute(select(busy_marks))).all() == []
