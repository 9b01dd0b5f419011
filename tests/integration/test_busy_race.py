"""Proof: 200 concurrent click-to-calls for one free agent, spread over two real server
processes sharing one database, admit exactly one call; repeated for 20 rounds."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..conftest import PG_URL
from ..users.servers import Server, agent_state, basic, phone_action, set_phone, shared_database

log = logging.getLogger(__name__)

ACCOUNT = "acme"
AUTH = basic("k_race", "t_race")
EXOPHONE = "+912241499102"
AGENT = "+919900000001"
CUSTOMER = "+919800000001"
REQUESTS = 200
ROUNDS = 20
FREE_DEADLINE_S = 15.0

CONFIG = f"""
[[accounts]]
sid = "{ACCOUNT}"
api_key = "k_race"
api_token = "t_race"
rate_limit_per_minute = 0
exophones = ["{EXOPHONE}"]

[[accounts.users]]
first_name = "Asha"
last_name = "Rao"
email = "asha@example.com"

[[accounts.users.devices]]
contact_uri = "{AGENT}"
available = true
verified = true
"""


@pytest.fixture(params=["sqlite", "postgresql"] if PG_URL else ["sqlite"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Server]]:
    config = tmp_path / "callbridge.toml"
    config.write_text(CONFIG)
    with shared_database(request.param, tmp_path) as url:
        pair = [Server(name, url, tmp_path, config=config) for name in ("a", "b")]
        try:
            yield pair
        finally:
            for server in pair:
                server.kill()


async def _start(servers: list[Server]) -> None:
    # One after the other: each applies the config file at start.
    for server in servers:
        server.start()
        await server.wait_ready()


async def _round(
    client: httpx.AsyncClient, servers: list[Server]
) -> tuple[collections.Counter[tuple[int, int | None]], list[str]]:
    body = {
        "from": {"contact_uri": AGENT},
        "to": {"contact_uri": CUSTOMER},
        "virtual_number": EXOPHONE,
        "attempt_time_out": 120,
    }

    async def one(i: int) -> httpx.Response:
        server = servers[i % len(servers)]
        return await client.post(
            f"{server.base_url}/v3/accounts/{ACCOUNT}/calls", json=body, headers=AUTH
        )

    responses = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    outcomes: collections.Counter[tuple[int, int | None]] = collections.Counter()
    accepted: list[str] = []
    for r in responses:
        payload = r.json()["response"]
        code = payload["error_data"]["code"] if payload.get("error_data") else None
        outcomes[(r.status_code, code)] += 1
        if r.status_code == 200:
            accepted.append(payload["call_details"]["sid"])
    return outcomes, accepted


async def _end_call_and_wait_free(client: httpx.AsyncClient, servers: list[Server]) -> float:
    started = time.monotonic()
    deadline = started + FREE_DEADLINE_S
    while True:
        # The call lives on whichever process admitted it; hang up the agent's phone on both.
        for server in servers:
            await phone_action(client, server, AGENT, AUTH, "hangup")
        states = [await agent_state(client, s, ACCOUNT, AGENT, AUTH) for s in servers]
        if all(s["status"] == "free" and s["active_call"] is None for s in states):
            return time.monotonic() - started
        assert time.monotonic() < deadline, f"agent still busy: {states}"
        await asyncio.sleep(0.05)


async def test_two_processes_admit_exactly_one_call_per_free_agent(servers: list[Server]) -> None:
    await _start(servers)
    # Idle connections are dropped before the server's own 5 s keep-alive timeout would close
    # them under a request the client is sending (which reads as ReadError, not as our answer).
    limits = httpx.Limits(
        max_connections=2 * REQUESTS, max_keepalive_connections=2 * REQUESTS, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        for server in servers:
            # The agent's phone rings until we hang it up, so the call outlives each round.
            await set_phone(client, server, AGENT, AUTH, outcome="manual")
            state = await agent_state(client, server, ACCOUNT, AGENT, AUTH)
            assert state == {"status": "free", "available": True, "active_call": None}
        round_times: list[float] = []
        free_times: list[float] = []
        for n in range(ROUNDS):
            started = time.monotonic()
            outcomes, accepted = await _round(client, servers)
            round_times.append(time.monotonic() - started)
            assert outcomes == {(200, None): 1, (409, 10706): REQUESTS - 1}, (n, outcomes)
            [sid] = accepted
            state = await agent_state(client, servers[n % 2], ACCOUNT, AGENT, AUTH)
            assert (state["status"], state["active_call"]) == ("busy", sid)
            free_times.append(await _end_call_and_wait_free(client, servers))
            r = await client.get(
                f"{servers[0].base_url}/v3/accounts/{ACCOUNT}/calls/{sid}", headers=AUTH
            )
            details = r.json()["response"]["call_details"]
            assert (details["state"], details["status"]) == ("terminal", "from_leg_unanswered")
        r = await client.get(
            f"{servers[1].base_url}/v3/accounts/{ACCOUNT}/calls",
            params={"limit": 200},
            headers=AUTH,
        )
        calls = r.json()["response"]
        assert len(calls) == ROUNDS
        assert all(c["call_details"]["state"] == "terminal" for c in calls)
    log.warning(
        "busy race: %d rounds x %d requests; round max %.2fs mean %.2fs; "
        "free after hangup max %.2fs",
        ROUNDS,
        REQUESTS,
        max(round_times),
        sum(round_times) / len(round_times),
        max(free_times),
    )
