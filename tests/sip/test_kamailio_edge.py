"""Kamailio in front of two `callbridge serve --driver sip` nodes sharing one fresh PostgreSQL
database: its dispatcher spreads inbound calls (SIPp customers) over both nodes, which connect
them to agents on a SIPp trunk through Kamailio (SIP_OUTBOUND_PROXY); a phone registers through
Kamailio with one node's registrar and the other node calls it there. Then one node is killed
(SIGKILL): its call ends and its agent is freed by the survivor (SPEC §6), and new calls all
land on the survivor and are answered."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from callbridge.clock import SystemClock
from callbridge.config import apply_config, parse_config
from callbridge.store.repo import Store
from callbridge.store.tables import calls, sip_bindings
from tests.sip.conftest import require, sip_settings
from tests.sip.kamailio import Kamailio, kamailio_path, start_kamailio
from tests.sip.sipp import Sipp, free_port, start_sipp
from tests.sip.support import ACCOUNT, AGENT_HZ, AUTH, CONFIG, CUSTOMER_HZ, EXOPHONE
from tests.sip.test_sip_server import SipServer, alive
from tests.users.servers import shared_database

pytestmark = pytest.mark.sip

PG_URL = os.environ.get("CALLBRIDGE_TEST_DATABASE_URL")
AGENTS = [f"+91990000000{i}" for i in range(1, 6)]
PHONE_PASSWORD = "edge-phone-pw-1"
PHONE = "sip:2001@agents.callbridge.test"
LEASE_TTL_S = 2.0

USERS = "".join(
    f"""
[[accounts.users]]
first_name = "Agent"
last_name = "No{i}"
email = "agent{i}@example.com"

[[accounts.users.devices]]
contact_uri = "{uri}"
available = true
verified = true
"""
    for i, uri in enumerate(AGENTS, start=1)
)
PHONE_USER = f"""
[[accounts.users]]
first_name = "Desk"
last_name = "Phone"
email = "desk@example.com"

[[accounts.users.devices]]
contact_uri = "{PHONE}"
available = true
verified = true
sip_password = "{PHONE_PASSWORD}"
"""
DESTINATIONS = ", ".join(f'{{ contact_uri = "{uri}" }}' for uri in AGENTS)
FLOW = f"""
[[accounts.flows]]
name = "Support"

[accounts.flows.connect]
destinations = [{DESTINATIONS}]
strategy = "sequential"
attempt_timeout_s = 10

[accounts.flows.no_agent]
action = "message"
message_s = 2

[[accounts.exophone_flows]]
number = "{EXOPHONE}"
flow = "Support"
"""


@pytest.fixture
def fresh_database(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL database of this test's own, migrated, dropped afterwards."""
    require("CALLBRIDGE_TEST_DATABASE_URL (PostgreSQL)", PG_URL is not None)
    require("kamailio (Debian package kamailio)", kamailio_path() is not None)
    with shared_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[Store]:
    store = Store(fresh_database)
    await apply_config(store, parse_config(CONFIG + USERS + PHONE_USER + FLOW), SystemClock())
    yield store
    await store.close()


class Edge:
    """The running deployment: nodes by name, Kamailio, and the agents' trunk."""

    def __init__(self, nodes: dict[str, SipServer], kamailio: Kamailio, trunk: Sipp) -> None:
        self.nodes = nodes
        self.kamailio = kamailio
        self.trunk = trunk

    def node_of(self, owner: str) -> str:
        for name, node in self.nodes.items():
            if f"-{node.process.pid}-" in owner:
                return name
        raise AssertionError(f"owner {owner} is none of our nodes")


@pytest.fixture
async def edge(
    store: Store, fresh_database: str, tmp_path: Path, sipp: Callable[..., Sipp]
) -> AsyncIterator[Edge]:
    trunk = sipp("uas_answer_tone_via_proxy.xml", tone_hz=AGENT_HZ, calls=50, timeout_s=120)
    nodes: dict[str, SipServer] = {}
    worker_ports: dict[str, list[int]] = {}
    registrar_ports: list[int] = []
    kamailio_port_holder: list[Kamailio] = []
    proxy_port = free_port()
    try:
        for name in ("a", "b"):
            ports = sip_settings(workers=2)
            worker_ports[name] = [ports.sip_port, ports.sip_port + 1]
            registrar_ports.append(free_port())
            workdir = tmp_path / f"node-{name}"
            workdir.mkdir()
            nodes[name] = SipServer(
                workdir,
                {
                    "CALLBRIDGE_DATABASE_URL": fresh_database,
                    "CALLBRIDGE_LOG_LEVEL": "INFO",
                    "CALLBRIDGE_SIP_BIND_HOST": "127.0.0.1",
                    "CALLBRIDGE_SIP_PORT": str(ports.sip_port),
                    "CALLBRIDGE_SIP_RTP_PORT_MIN": str(ports.sip_rtp_port_min),
                    "CALLBRIDGE_SIP_RTP_PORT_MAX": str(ports.sip_rtp_port_max),
                    "CALLBRIDGE_SIP_WORKERS": "2",
                    "CALLBRIDGE_SIP_TRUNK_HOST": "127.0.0.1",
                    "CALLBRIDGE_SIP_TRUNK_PORT": str(trunk.port),
                    "CALLBRIDGE_SIP_OUTBOUND_PROXY": f"sip:127.0.0.1:{proxy_port};lr",
                    "CALLBRIDGE_SIP_REGISTRAR_PORT": str(registrar_ports[-1]),
                    "CALLBRIDGE_SIGNING_KEY": "edge-test-shared-key",
                    "CALLBRIDGE_HEARTBEAT_INTERVAL_S": "0.5",
                    "CALLBRIDGE_LEASE_TTL_S": str(LEASE_TTL_S),
                    "CALLBRIDGE_RECONCILE_INTERVAL_S": "0.5",
                },
            )
        await asyncio.gather(*(node.wait_ready(60) for node in nodes.values()))
        # Interleaved, so round robin alternates between the nodes.
        spread = [
            p for pair in zip(worker_ports["a"], worker_ports["b"], strict=True) for p in pair
        ]
        kamailio_port_holder.append(
            start_kamailio(
                tmp_path / "kamailio", nodes=spread, registrars=registrar_ports, port=proxy_port
            )
        )
        yield Edge(nodes, kamailio_port_holder[0], trunk)
    finally:
        for kamailio in kamailio_port_holder:
            kamailio.stop()
        for node in nodes.values():
            children = node.children() if node.process.poll() is None else []
            node.stop(signal.SIGKILL)
            for pid in children:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def customer(edge: Edge, tmp_path: Path, caller: str, talk_ms: int) -> Sipp:
    """One inbound call from `caller` to the ExoPhone, through Kamailio."""
    return start_sipp(
        "uac_call_via_proxy.xml",
        tmp_path / f"customer-{caller}-{time.monotonic_ns()}",
        remote=f"127.0.0.1:{edge.kamailio.port}",
        tone_hz=CUSTOMER_HZ,
        pause_ms=talk_ms,
        timeout_s=60,
        keys={"caller": caller},
        extra=["-s", EXOPHONE.removeprefix("+")],
    )


async def rows(store: Store) -> dict[str, tuple[str, str, str | None]]:
    """Every call: from number → (sid, owner node id, state)."""
    async with store.read() as conn:
        result = await conn.execute(
            select(calls.c.from_uri, calls.c.sid, calls.c.owner_node, calls.c.state)
        )
        return {r[0]: (r[1], r[2], r[3]) for r in result}


async def until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def call_details(client: httpx.AsyncClient, base: str, sid: str) -> dict[str, Any]:
    r = await client.get(f"{base}/v3/accounts/{ACCOUNT}/calls/{sid}", headers=AUTH)
    assert r.status_code == 200, r.text
    details: dict[str, Any] = r.json()["response"]["call_details"]
    return details


async def agent_states(client: httpx.AsyncClient, base: str) -> dict[str, str]:
    r = await client.get(
        f"{base}/v2/accounts/{ACCOUNT}/users?fields=devices&limit=50", headers=AUTH
    )
    assert r.status_code == 200, r.text
    return {
        d["contact_uri"]: d["status"]
        for item in r.json()["response"]
        for d in item["data"]["devices"]
    }


@pytest.mark.slow
async def test_kamailio_spreads_calls_and_the_survivor_takes_over_a_dead_node(
    edge: Edge, store: Store, tmp_path: Path
) -> None:
    # A phone registers through Kamailio with one node's registrar; the binding is in the
    # shared database, so the other node calls the phone there (through Kamailio too).
    desk = start_sipp(
        "uas_answer_tone_via_proxy.xml", tmp_path / "desk-phone", tone_hz=AGENT_HZ, timeout_s=60
    )
    contact = f"sip:2001@{desk.uri_host}"
    register = start_sipp(
        "uac_register.xml",
        tmp_path / "register",
        remote=f"127.0.0.1:{edge.kamailio.port}",
        timeout_s=10,
        keys={
            "user": "2001",
            "domain": "agents.callbridge.test",
            "contact": contact,
            "expires": "300",
        },
        extra=["-au", "2001", "-ap", PHONE_PASSWORD],
    )
    try:
        assert await asyncio.to_thread(register.wait, 15) == 0, register.output()[-2000:]
        async with store.read() as conn:
            bound = [r[0] for r in await conn.execute(select(sip_bindings.c.contact))]
        assert bound == [contact]
        [registrar] = [n for n, node in edge.nodes.items() if "sip register aor=" in node.log()]
        other = edge.nodes["b" if registrar == "a" else "a"]
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                f"{other.base_url}/v3/accounts/{ACCOUNT}/calls",
                headers=AUTH,
                json={
                    "from": {"contact_uri": PHONE},
                    "to": {"contact_uri": "+919800000077"},
                    "virtual_number": EXOPHONE,
                    "max_time_limit": 1,
                },
            )
            assert r.status_code == 200, r.text
            sid = r.json()["response"]["call_details"]["sid"]

            async def desk_call_done() -> dict[str, Any] | None:
                details = await call_details(client, other.base_url, sid)
                return details if details["state"] == "terminal" else None

            details = await until(desk_call_done, 20, "the call from the registered phone")
        assert details["status"] == "completed", details
        assert await asyncio.to_thread(desk.wait, 10) == 0  # the phone took INVITE and BYE
    finally:
        desk.stop()
        register.stop()

    # Calls spread: place them one by one until each node holds one, all bridged.
    placed: dict[str, Sipp] = {}
    owners: dict[str, str] = {}
    for i in range(4):
        caller = f"+9198000000{i + 10}"
        placed[caller] = customer(edge, tmp_path, caller, talk_ms=10000)

        async def landed(caller: str = caller) -> tuple[str, str, str | None] | None:
            return (await rows(store)).get(caller)

        _, owner, _ = await until(landed, 15, f"call from {caller}")
        owners[caller] = edge.node_of(owner)
        if set(owners.values()) == {"a", "b"}:
            break
    assert set(owners.values()) == {"a", "b"}, owners
    by_node = {node: caller for caller, node in owners.items()}
    survivor, victim = edge.nodes["a"], edge.nodes["b"]
    base = survivor.base_url
    async with httpx.AsyncClient(timeout=10) as client:

        async def bridged() -> bool:
            for caller in by_node.values():
                sid = (await rows(store))[caller][0]
                r = await client.get(f"{base}/v3/accounts/{ACCOUNT}/calls/{sid}/legs", headers=AUTH)
                to = r.json()["response"]["leg_details"]["to"]
                if not to or to[-1]["status"] != "in-progress":
                    return False
            return True

        await until(bridged, 15, "both calls bridged to agents")
        states = await agent_states(client, base)
        assert sorted(s for s in states.values() if s == "busy") == ["busy", "busy"]

        # Node b dies without a word.
        victim_workers = victim.children()
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        dead_sid = (await rows(store))[by_node["b"]][0]

        async def dead_call_ended() -> dict[str, Any] | None:
            details = await call_details(client, base, dead_sid)
            return details if details["state"] == "terminal" else None

        details = await until(dead_call_ended, LEASE_TTL_S + 10, "the dead node's call to end")
        assert details["end_time"] is not None

        async def one_agent_busy() -> bool:
            states = await agent_states(client, base)
            return list(states.values()).count("busy") == 1

        await until(one_agent_busy, 10, "the dead node's agent to be freed")
        placed[by_node["b"]].stop()
        for pid in victim_workers:
            await until(_gone(pid), 10, f"dead node's worker {pid} to exit")

        # The survivor's own call carried on and ends normally.
        first = placed[by_node["a"]]
        assert await asyncio.to_thread(first.wait, 30) == 0
        kept_sid = (await rows(store))[by_node["a"]][0]
        assert (await call_details(client, base, kept_sid))["status"] == "completed"

        # New calls: every one is answered, by the survivor (one at a time: with the PyPI
        # pjsua2 wheel a worker holds 4 call legs).
        after = customer(edge, tmp_path, "+919800000099", talk_ms=1000)
        assert await asyncio.to_thread(after.wait, 30) == 0, after.output()[-2000:]
        after_more = start_sipp(
            "uac_call_via_proxy.xml",
            tmp_path / "customers-after",
            remote=f"127.0.0.1:{edge.kamailio.port}",
            tone_hz=CUSTOMER_HZ,
            pause_ms=1000,
            calls=3,
            timeout_s=60,
            keys={"caller": "+919800000098"},
            extra=["-s", EXOPHONE.removeprefix("+"), "-l", "1"],
        )
        assert await asyncio.to_thread(after_more.wait, 40) == 0, after_more.output()[-2000:]
        async with store.read() as conn:
            new = (
                await conn.execute(
                    select(calls.c.owner_node, calls.c.status).where(
                        calls.c.from_uri.in_(["+919800000099", "+919800000098"])
                    )
                )
            ).all()
        assert len(new) == 4
        assert {edge.node_of(owner) for owner, _ in new} == {"a"}
        assert {status for _, status in new} == {"completed"}
        assert set((await agent_states(client, base)).values()) == {"free"}


def _gone(pid: int) -> Callable[[], Any]:
    async def check() -> bool:
        return not alive(pid)

    return check
