"""Proofs that nodes sharing one PostgreSQL never disagree, driven with real processes until the
guarantees would break:

- three nodes; in every round one is killed -9 while it holds ≥ 100 calls in each phase (agent
  ringing, customer ringing, bridged) and restarted at once, while the survivors are asked, over
  and over, to call some of its agents: each is refused busy until that agent's orphaned call
  has ended, then admitted. After ≥ 10 rounds no agent is busy, every call is terminal, each
  call has exactly one terminal callback per URL, no agent was ever on two live calls, and no
  live node was ever declared dead;
- a node restarting over 800 orphaned calls keeps its lease while they are ended: its new calls
  are never ended by the peer, and their agents stay busy;
- a node frozen past its lease (SIGSTOP) is declared dead and its calls ended by the peer; when it
  wakes it ends nothing twice, hangs up the legs it still held and rejoins under a new id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from ..conftest import PG_URL
from ..users.servers import Server, shared_database
from ..webhooks.helpers import Receiver
from .cluster import (
    Db,
    gather_bounded,
    lease_env,
    log_events,
    make_nodes,
    phone_state,
    place,
    resume,
    set_phones,
    stall,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PG_URL, reason="the cluster proofs need PostgreSQL"),
]

log = logging.getLogger(__name__)

LEASE_LOST = "lease lost; ending this node's calls"
ORPHAN_ENDED = "orphaned call ended"
REJOINED = "rejoined under a new node id"


def agent(round_no: int, i: int) -> str:
    return f"+9199{round_no:02d}{i:06d}"


def customer(round_no: int, i: int) -> str:
    return f"+9198{round_no:02d}{i:06d}"


@pytest.fixture
def cluster_db(tmp_path: Path) -> Iterator[str]:
    with shared_database("postgresql", tmp_path) as url:
        yield url


def stop_all(nodes: list[Server]) -> None:
    for node in nodes:
        node.kill()


def callbacks_for(receiver: Receiver) -> list[dict[str, str]]:
    return [
        {"event": "terminal", "url": receiver.url("/json")},
        {"event": "terminal", "url": receiver.url("/form"), "content_type": "multipart/form-data"},
    ]


def terminal_deliveries(receiver: Receiver) -> dict[tuple[str, str], set[str]]:
    """{(call sid, receiver path): distinct X-Exotel-Event-Sid values} of terminal callbacks."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for request in receiver.requests:
        if request.path == "/json":
            body = json.loads(request.body)
            details, event = body["call_details"], body["event_details"]
        else:
            fields = _form_fields(request.headers["content-type"], request.body)
            details = json.loads(fields["call_details"])
            event = json.loads(fields["event_details"])
        if event["event_type"] == "terminal":
            seen[(details["sid"], request.path)].add(request.event_sid)
    return seen


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[0] for k, v in parse_qs(body.decode()).items()}
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    fields: dict[str, str] = {}
    for part in body.split(b"--" + boundary):
        head, _, value = part.partition(b"\r\n\r\n")
        if b'name="' not in head:
            continue
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value.rstrip(b"\r\n").decode()
    return fields


async def current_id(db: Db, node: Server) -> str:
    assert node.process is not None
    ids = await db.node_ids(node.process.pid)
    assert len(ids) == 1, ids
    return ids[0]


# -- three nodes, kill -9 in every round ----------------------------------------------------

NODES = ("n1", "n2", "n3")
ROUNDS = 10
PER_PHASE = 100
SURVIVOR_CALLS = 20
RETAKEN_PER_PHASE = 10
"""Agents of each phase the survivors are asked to call again as soon as the victim dies."""
RETAKE_CUSTOMER = 1000
CHAOS_ENV = lease_env(ttl_s=3.0, heartbeat_s=0.25, reconcile_s=0.5)


async def retake_agents(
    db: Db,
    survivors: list[Server],
    round_no: int,
    agents: list[int],
    callbacks: list[dict[str, str]],
) -> list[str]:
    """From the moment the victim dies, calls its `agents` through the survivors until each is
    admitted. Until that agent's orphaned call has ended every answer must be busy (409/10706);
    when one is admitted, the orphaned call must already be terminal. Returns the new calls."""

    async def until_admitted(client: httpx.AsyncClient, i: int) -> str:
        survivor = survivors[i % len(survivors)]
        refused = 0
        deadline = time.monotonic() + 60
        while True:
            r = await place(
                client,
                survivor,
                agent(round_no, i),
                customer(round_no, RETAKE_CUSTOMER + i),
                callbacks,
            )
            if r.status_code == 200:
                break
            code = r.json()["response"]["error_data"]["code"]
            assert (r.status_code, code) == (409, 10706), r.text
            refused += 1
            assert time.monotonic() < deadline, f"agent {agent(round_no, i)} never freed"
            await asyncio.sleep(0.2)
        sid: str = r.json()["response"]["call_details"]["sid"]
        # The victim's call for this agent was live when it died, so the first ask was refused.
        assert refused >= 1, agent(round_no, i)
        others = await db.rows(
            "SELECT sid, state FROM calls WHERE from_uri = $1 AND sid <> $2",
            agent(round_no, i),
            sid,
        )
        assert [r["state"] for r in others] == ["terminal"], (agent(round_no, i), others)
        return sid

    async with httpx.AsyncClient(timeout=30.0) as client:
        return list(await asyncio.gather(*(until_admitted(client, i) for i in agents)))


async def test_three_nodes_killed_in_every_round_never_disagree(
    cluster_db: str, tmp_path: Path, receiver: Receiver
) -> None:
    nodes = make_nodes(NODES, cluster_db, tmp_path, CHAOS_ENV)
    killed_ids: set[str] = set()
    survivor_sids: list[str] = []
    placed: list[str] = []
    overlaps: list[Any] = []
    try:
        for node in nodes:
            node.start()
        await asyncio.gather(*(node.wait_ready() for node in nodes))
        async with Db(cluster_db) as db, Db(cluster_db) as watch_db:
            stop_watch = asyncio.Event()

            async def watch_double_booking() -> None:
                while not stop_watch.is_set():
                    doubled = await watch_db.agents_on_two_active_calls()
                    if doubled:
                        overlaps.append(doubled)
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch_double_booking())
            callbacks = callbacks_for(receiver)
            for round_no in range(ROUNDS):
                victim = nodes[round_no % len(nodes)]
                survivors = [n for n in nodes if n is not victim]
                victim_id = await current_id(db, victim)
                async with httpx.AsyncClient(timeout=30.0) as client:
                    phase_of = {i: ("leg1", "leg2", "bridged")[i // PER_PHASE] for i in range(300)}
                    leg1 = [i for i, p in phase_of.items() if p == "leg1"]
                    leg2 = [i for i, p in phase_of.items() if p == "leg2"]
                    await set_phones(
                        client, victim, [agent(round_no, i) for i in leg1], outcome="manual"
                    )
                    await set_phones(
                        client, victim, [customer(round_no, i) for i in leg2], outcome="manual"
                    )
                    survivor_load = {
                        (s, 500 + k * SURVIVOR_CALLS + j)
                        for k, s in enumerate(survivors)
                        for j in range(SURVIVOR_CALLS)
                    }
                    retaken = [
                        phase * PER_PHASE + j
                        for phase in range(3)
                        for j in range(RETAKEN_PER_PHASE)
                    ]
                    for k, s in enumerate(survivors):
                        await set_phones(
                            client,
                            s,
                            [customer(round_no, i) for t, i in survivor_load if t is s]
                            + [
                                customer(round_no, RETAKE_CUSTOMER + i)
                                for i in retaken
                                if i % len(survivors) == k
                            ],
                            outcome="answer",
                            answer_after=0.5,
                            hangup_after=1.0,
                        )
                    work = [
                        place(client, victim, agent(round_no, i), customer(round_no, i), callbacks)
                        for i in phase_of
                    ] + [
                        place(client, s, agent(round_no, i), customer(round_no, i), callbacks)
                        for s, i in survivor_load
                    ]
                    responses = await gather_bounded(work)
                    for r in responses:
                        assert r.status_code == 200, r.text
                    sids = [r.json()["response"]["call_details"]["sid"] for r in responses]
                    placed += sids
                    survivor_sids += sids[len(phase_of) :]

                    async def victim_in_every_phase(owner: str = victim_id) -> tuple[bool, Any]:
                        counts = await db.phases(owner)
                        return min(counts.values()) >= PER_PHASE, counts

                    await wait_until("victim holds calls in every phase", victim_in_every_phase, 60)
                victim.kill()
                killed_ids.add(victim_id)
                victim.start()
                retaken_sids = await retake_agents(db, survivors, round_no, retaken, callbacks)
                placed += retaken_sids
                survivor_sids += retaken_sids
                await victim.wait_ready()
            # The last rounds' survivors' calls end by themselves; the last victim's are ended by
            # the others once its lease runs out.

            async def settled() -> tuple[bool, Any]:
                active = await db.value("SELECT count(*) FROM calls WHERE state = 'active'")
                busy = await db.value("SELECT count(*) FROM busy_marks")
                return active == 0 and busy == 0, {"active": active, "busy": busy}

            await wait_until("every call terminal and every agent free", settled, 60)

            async def delivered() -> tuple[bool, Any]:
                pending = await db.value("SELECT count(*) FROM outbox WHERE status <> 'delivered'")
                return pending == 0, {"undelivered": pending}

            await wait_until("every callback delivered", delivered, 90)
            stop_watch.set()
            await watcher

            # Exactly one terminal event per call and URL, in the outbox and at the receiver.
            rows = await db.rows(
                "SELECT call_sid, url, count(*) AS n FROM outbox WHERE event_type = 'terminal' "
                "GROUP BY call_sid, url"
            )
            per_call = {(r["call_sid"], r["url"]): r["n"] for r in rows}
            expected = {(sid, cb["url"]) for sid in placed for cb in callbacks}
            assert set(per_call) == expected
            assert {n for n in per_call.values()} == {1}
            seen = terminal_deliveries(receiver)
            assert set(seen) == {(sid, path) for sid in placed for path in ("/json", "/form")}
            assert {len(events) for events in seen.values()} == {1}

            # Only killed nodes' calls were ever ended by a peer, and no live node lost its lease.
            reaped = [e for node in nodes for e in log_events(node, ORPHAN_ENDED)]
            reaped_owners = {e["owner"] for e in reaped}
            assert reaped_owners and reaped_owners <= killed_ids, reaped_owners - killed_ids
            # Each orphaned call was ended by exactly one writer, on whichever node.
            assert len({e["call_sid"] for e in reaped}) == len(reaped)
            assert [e for node in nodes for e in log_events(node, LEASE_LOST)] == []
            assert overlaps == []
            statuses = await db.rows(
                "SELECT status, count(*) AS n FROM calls WHERE sid = ANY($1) GROUP BY status",
                survivor_sids,
            )
            assert {r["status"]: r["n"] for r in statuses} == {"completed": len(survivor_sids)}
    finally:
        stop_all(nodes)
    log.warning(
        "chaos: %d rounds, %d calls, %d orphaned calls ended once each, %d terminal callbacks",
        ROUNDS,
        len(placed),
        len(reaped),
        len(receiver.requests),
    )


# -- a restart over 800 orphaned calls ------------------------------------------------------

ORPHANS = 800
FRESH = 100
RESTART_TTL_S = 3.0
RESTART_ENV = lease_env(ttl_s=RESTART_TTL_S, heartbeat_s=0.25, reconcile_s=0.5)


async def test_node_restarting_over_800_orphans_keeps_its_lease(
    cluster_db: str, tmp_path: Path, receiver: Receiver
) -> None:
    nodes = make_nodes(("a", "b"), cluster_db, tmp_path, RESTART_ENV)
    node_a, node_b = nodes
    callbacks = callbacks_for(receiver)[:1]
    try:
        for node in nodes:
            node.start()
        await asyncio.gather(*(node.wait_ready() for node in nodes))
        async with Db(cluster_db) as db, httpx.AsyncClient(timeout=30.0) as client:
            first_life = await current_id(db, node_a)
            responses = await gather_bounded(
                [
                    place(client, node_a, agent(0, i), customer(0, i), callbacks)
                    for i in range(ORPHANS)
                ]
            )
            assert {r.status_code for r in responses} == {200}
            orphan_sids = [r.json()["response"]["call_details"]["sid"] for r in responses]

            async def all_bridged() -> tuple[bool, Any]:
                counts = await db.phases(first_life)
                return counts["bridged"] == ORPHANS, counts

            await wait_until("800 calls bridged", all_bridged, 60)
        node_a.kill()
        node_a.start()
        await node_a.wait_ready()
        async with Db(cluster_db) as db, httpx.AsyncClient(timeout=30.0) as client:
            second_life = await current_id(db, node_a)
            # New calls on the restarted node while the orphans are still being ended.
            fresh = await gather_bounded(
                [place(client, node_a, agent(1, i), customer(1, i), []) for i in range(FRESH)]
            )
            assert {r.status_code for r in fresh} == {200}
            fresh_sids = [r.json()["response"]["call_details"]["sid"] for r in fresh]

            async def orphans_ended() -> tuple[bool, Any]:
                left = await db.value(
                    "SELECT count(*) FROM calls WHERE sid = ANY($1) AND state = 'active'",
                    orphan_sids,
                )
                return left == 0, {"still_active": left}

            await wait_until("the orphans are ended", orphans_ended, 60)
            # Several lease periods later the restarted node's calls are still its own.
            await asyncio.sleep(3 * RESTART_TTL_S)
            states = await db.rows(
                "SELECT state, owner_node, count(*) AS n FROM calls WHERE sid = ANY($1) "
                "GROUP BY state, owner_node",
                fresh_sids,
            )
            assert [(r["state"], r["owner_node"], r["n"]) for r in states] == [
                ("active", second_life, FRESH)
            ]
            # Their agents are busy (a second call for them is refused) and really in a call.
            again = await gather_bounded(
                [place(client, node_b, agent(1, i), customer(2, i), []) for i in range(FRESH)]
            )
            assert {r.json()["response"]["error_data"]["code"] for r in again} == {10706}
            assert {await phone_state(client, node_a, agent(1, i)) for i in range(10)} == {
                "in-call"
            }
            # The orphans' agents were freed and take calls again.
            reused = await gather_bounded(
                [place(client, node_b, agent(0, i), customer(3, i), []) for i in range(50)]
            )
            assert {r.status_code for r in reused} == {200}
            terminal = await db.rows(
                "SELECT call_sid, count(*) AS n FROM outbox WHERE event_type = 'terminal' "
                "AND call_sid = ANY($1) GROUP BY call_sid",
                orphan_sids,
            )
            assert len(terminal) == ORPHANS and {r["n"] for r in terminal} == {1}
        owners = {e["owner"] for node in nodes for e in log_events(node, ORPHAN_ENDED)}
        assert owners == {first_life}
        assert [e for node in nodes for e in log_events(node, LEASE_LOST)] == []
    finally:
        stop_all(nodes)


# -- a node frozen past its lease -------------------------------------------------------------

FROZEN_CALLS = 20
STALL_ENV = lease_env(ttl_s=2.0, heartbeat_s=0.25, reconcile_s=0.25)


async def test_node_frozen_past_its_lease_hangs_up_and_rejoins(
    cluster_db: str, tmp_path: Path, receiver: Receiver
) -> None:
    nodes = make_nodes(("a", "b"), cluster_db, tmp_path, STALL_ENV)
    node_a, node_b = nodes
    callbacks = callbacks_for(receiver)
    try:
        for node in nodes:
            node.start()
        await asyncio.gather(*(node.wait_ready() for node in nodes))
        async with Db(cluster_db) as db, httpx.AsyncClient(timeout=30.0) as client:
            frozen_id = await current_id(db, node_a)
            agents = [agent(0, i) for i in range(FROZEN_CALLS)]
            responses = await gather_bounded(
                [place(client, node_a, a, customer(0, i), callbacks) for i, a in enumerate(agents)]
            )
            sids = [r.json()["response"]["call_details"]["sid"] for r in responses]

            async def bridged() -> tuple[bool, Any]:
                counts = await db.phases(frozen_id)
                return counts["bridged"] == FROZEN_CALLS, counts

            await wait_until("calls bridged", bridged, 30)
            stall(node_a)
            frozen_at = time.monotonic()

            async def ended_by_peer() -> tuple[bool, Any]:
                left = await db.value(
                    "SELECT count(*) FROM calls WHERE sid = ANY($1) AND state = 'active'", sids
                )
                busy = await db.value("SELECT count(*) FROM busy_marks")
                return left == 0 and busy == 0, {"active": left, "busy": busy}

            await wait_until("the peer ends the frozen node's calls", ended_by_peer, 20)
            # The agents are free: the peer connects them again while the frozen node sleeps.
            again = await gather_bounded(
                [place(client, node_b, a, customer(1, i), []) for i, a in enumerate(agents)]
            )
            assert {r.status_code for r in again} == {200}
            resume(node_a)

            async def hung_up() -> tuple[bool, Any]:
                states = {await phone_state(client, node_a, a) for a in agents}
                return states == {"idle"}, states

            await wait_until("the woken node hangs up the legs it held", hung_up, 15)
            woke_after_s = time.monotonic() - frozen_at

            async def rejoined() -> tuple[bool, Any]:
                assert node_a.process is not None
                ids = await db.node_ids(node_a.process.pid)
                return ids != [frozen_id] and len(ids) == 1, ids

            await wait_until("the woken node rejoins under a new id", rejoined, 15)
            fresh = await place(client, node_a, agent(2, 0), customer(2, 0), [])
            assert fresh.status_code == 200, fresh.text

            # The peer's calls for the same agents were not disturbed; each ended call has
            # exactly one terminal event per URL.
            async def peer_calls_connected() -> tuple[bool, Any]:
                states = {await phone_state(client, node_b, a) for a in agents}
                return states == {"in-call"}, states

            await wait_until("the peer's calls connect", peer_calls_connected, 15)
            rows = await db.rows(
                "SELECT count(*) AS n FROM outbox WHERE event_type = 'terminal' "
                "AND call_sid = ANY($1) GROUP BY call_sid, url",
                sids,
            )
            assert len(rows) == FROZEN_CALLS * len(callbacks) and {r["n"] for r in rows} == {1}
        assert len(log_events(node_a, LEASE_LOST)) == 1
        assert len(log_events(node_a, REJOINED)) == 1
        assert {e["owner"] for e in log_events(node_b, ORPHAN_ENDED)} == {frozen_id}
        assert log_events(node_b, LEASE_LOST) == []
    finally:
        stop_all(nodes)
    log.warning(
        "stall: the frozen node was woken and had hung up %.1fs after freezing", woke_after_s
    )
