"""Proof: kill -9 a server process while 20 state-managed calls are ringing leg 1, ringing
leg 2 or bridged; after a restart every agent is free and every call terminal within 15 s,
and nothing else is lost (a survivor's call, a deferred availability change, the users)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import PG_URL
from ..users.servers import Server, agent_state, basic, set_phone, shared_database

log = logging.getLogger(__name__)

ACCOUNT = "acme"
AUTH = basic("k_crash", "t_crash")
EXOPHONE = "+912241499102"
CALLS = 20
RECOVERY_DEADLINE_S = 15.0
LEASE_ENV = {
    "CALLBRIDGE_LEASE_TTL_S": "2",
    "CALLBRIDGE_HEARTBEAT_INTERVAL_S": "0.5",
    "CALLBRIDGE_RECONCILE_INTERVAL_S": "0.5",
}


def agent(i: int) -> str:
    return f"+9199000001{i:02d}"


def customer(i: int) -> str:
    return f"+9198000001{i:02d}"


SURVIVOR = CALLS  # one more agent, whose call runs on the process that is not killed
LEG1_RINGING = range(0, 7)
LEG2_RINGING = range(7, 14)
BRIDGED = range(14, 20)
TURNED_OFF = 14  # turned OFF during its call: must apply when the orphaned call is ended
EXPECTED_STATUS = {
    **{i: ("from_leg_no_dial", ["failed"], []) for i in LEG1_RINGING},
    **{i: ("to_leg_no_dial", ["completed"], ["failed"]) for i in LEG2_RINGING},
    **{i: ("completed", ["completed"], ["completed"]) for i in BRIDGED},
}


def config() -> str:
    text = f"""
[[accounts]]
sid = "{ACCOUNT}"
api_key = "k_crash"
api_token = "t_crash"
rate_limit_per_minute = 0
exophones = ["{EXOPHONE}"]
"""
    for i in range(CALLS + 1):
        text += f"""
[[accounts.users]]
first_name = "Agent{i:02d}"
last_name = "Crash"

[[accounts.users.devices]]
contact_uri = "{agent(i)}"
available = true
verified = true
"""
    return text


@pytest.fixture(params=["sqlite", "postgresql"] if PG_URL else ["sqlite"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Server]]:
    path = tmp_path / "callbridge.toml"
    path.write_text(config())
    with shared_database(request.param, tmp_path) as url:
        pair = [
            Server(name, url, tmp_path, config=path, env=LEASE_ENV)
            for name in ("victim", "survivor")
        ]
        try:
            yield pair
        finally:
            for server in pair:
                server.kill()


async def _get(client: httpx.AsyncClient, server: Server, path: str) -> dict[str, Any]:
    r = await client.get(f"{server.base_url}/v3/accounts/{ACCOUNT}{path}", headers=AUTH)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()["response"]
    return body


async def _place(client: httpx.AsyncClient, server: Server, i: int) -> str:
    r = await client.post(
        f"{server.base_url}/v3/accounts/{ACCOUNT}/calls",
        json={
            "from": {"contact_uri": agent(i)},
            "to": {"contact_uri": customer(i)},
            "virtual_number": EXOPHONE,
            "attempt_time_out": 600,
            "max_time_limit": 3600,
        },
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    sid: str = r.json()["response"]["call_details"]["sid"]
    return sid


def _phase(legs: dict[str, Any]) -> str:
    from_status = legs["from"][0]["status"] if legs["from"] else None
    to_status = legs["to"][0]["status"] if legs["to"] else None
    if to_status == "in-progress":
        return "bridged"
    if to_status == "ringing":
        return "leg2"
    if from_status == "ringing":
        return "leg1"
    return f"{from_status}/{to_status}"


async def _wait(deadline: float, what: str, check: Any) -> None:
    while True:
        ok, detail = await check()
        if ok:
            return
        assert time.monotonic() < deadline, f"{what}: {detail}"
        await asyncio.sleep(0.1)


async def test_killed_process_leaves_no_agent_busy(servers: list[Server]) -> None:
    victim, survivor = servers
    victim.start()
    await victim.wait_ready()
    survivor.start()
    await survivor.wait_ready()
    limits = httpx.Limits(keepalive_expiry=2.0)  # below the server's 5 s keep-alive timeout
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        for i in LEG1_RINGING:
            await set_phone(client, victim, agent(i), AUTH, outcome="manual")
        for i in (*LEG2_RINGING, *BRIDGED):
            await set_phone(client, victim, agent(i), AUTH, outcome="answer", answer_after=0.2)
        for i in LEG2_RINGING:
            await set_phone(client, victim, customer(i), AUTH, outcome="manual")
        for i in BRIDGED:
            await set_phone(client, victim, customer(i), AUTH, outcome="answer", answer_after=0.2)
        await set_phone(client, survivor, agent(SURVIVOR), AUTH, outcome="answer", answer_after=0.2)
        await set_phone(
            client, survivor, customer(SURVIVOR), AUTH, outcome="answer", answer_after=0.2
        )

        sids = {i: await _place(client, victim, i) for i in range(CALLS)}
        survivor_sid = await _place(client, survivor, SURVIVOR)

        expected_phase = {
            **{i: "leg1" for i in LEG1_RINGING},
            **{i: "leg2" for i in LEG2_RINGING},
            **{i: "bridged" for i in BRIDGED},
        }

        async def in_phase() -> tuple[bool, Any]:
            phases = {
                i: _phase((await _get(client, victim, f"/calls/{sid}/legs"))["leg_details"])
                for i, sid in sids.items()
            }
            return phases == expected_phase, phases

        await _wait(time.monotonic() + 15, "calls did not reach their phases", in_phase)
        for i in range(CALLS):
            state = await agent_state(client, survivor, ACCOUNT, agent(i), AUTH)
            assert (state["status"], state["active_call"]) == ("busy", sids[i])

        # Agent 14 turns OFF mid-call: deferred until the call ends, whoever ends it.
        users = f"{victim.base_url}/v2/accounts/{ACCOUNT}/users"
        r = await client.get(
            users,
            params={"devices.contact_uri": agent(TURNED_OFF), "fields": "devices"},
            headers=AUTH,
        )
        user = r.json()["response"][0]["data"]
        r = await client.put(
            f"{users}/{user['id']}/devices/{user['devices'][0]['id']}",
            json={"available": False},
            headers=AUTH,
        )
        assert r.status_code == 200 and r.json()["response"]["data"]["available"] is True

        killed_at = time.monotonic()
        victim.kill()
        # Restart at once, without the config file (the database already has everything;
        # re-applying the file would reset the devices' ON/OFF flags).
        victim.start(config=None)
        await victim.wait_ready()
        restarted_s = time.monotonic() - killed_at
        deadline = killed_at + RECOVERY_DEADLINE_S

        async def recovered() -> tuple[bool, Any]:
            busy = []
            for i in range(CALLS):
                state = await agent_state(client, victim, ACCOUNT, agent(i), AUTH)
                if state["status"] != "free" or state["active_call"] is not None:
                    busy.append(i)
            active = [
                i
                for i, sid in sids.items()
                if (await _get(client, victim, f"/calls/{sid}"))["call_details"]["state"]
                != "terminal"
            ]
            return not busy and not active, {"busy": busy, "active": active}

        await _wait(deadline, "not recovered in time", recovered)
        recovered_s = time.monotonic() - killed_at

        for i, sid in sids.items():
            details = (await _get(client, survivor, f"/calls/{sid}"))["call_details"]
            legs = (await _get(client, survivor, f"/calls/{sid}/legs"))["leg_details"]
            status, from_legs, to_legs = EXPECTED_STATUS[i]
            assert details["status"] == status, (i, details)
            assert details["end_time"] is not None
            assert [leg["status"] for leg in legs["from"]] == from_legs, (i, legs)
            assert [leg["status"] for leg in legs["to"]] == to_legs, (i, legs)

        # Nothing else lost: the survivor's call is untouched and its agent still busy; the
        # deferred OFF was applied; every user is still there.
        survivor_call = (await _get(client, victim, f"/calls/{survivor_sid}"))["call_details"]
        assert survivor_call["state"] == "active"
        state = await agent_state(client, victim, ACCOUNT, agent(SURVIVOR), AUTH)
        assert (state["status"], state["active_call"]) == ("busy", survivor_sid)
        state = await agent_state(client, survivor, ACCOUNT, agent(TURNED_OFF), AUTH)
        assert (state["status"], state["available"]) == ("free", False)
        r = await client.get(users, params={"limit": 50}, headers=AUTH)
        assert r.json()["metadata"]["total"] == CALLS + 1

        # The freed agents really take calls again, on either process.
        for i in range(CALLS):
            if i == TURNED_OFF:
                continue
            await _place(client, servers[i % 2], i)

    log.warning(
        "crash recovery: %d calls; restarted after %.2fs; "
        "all agents free and calls terminal %.2fs after kill -9",
        CALLS,
        restarted_s,
        recovered_s,
    )
