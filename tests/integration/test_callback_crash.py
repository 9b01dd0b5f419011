"""kill -9 of the server with 1,000 undelivered callback events: after a restart every event
is delivered (duplicates allowed and counted), none is lost."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx

from ..harness import DEFAULT_CONFIG
from ..users.servers import Server, basic, free_port, set_phone
from ..webhooks.helpers import Receiver

AUTH = basic("k_live_1", "t_live_1")
CALLS = 100
CALLBACKS_PER_CALL = 10


async def test_killed_server_loses_no_callback(tmp_path: Path) -> None:
    config = tmp_path / "callbridge.toml"
    config.write_text(DEFAULT_CONFIG)
    receiver = Receiver()
    receiver.port = free_port()  # down for now: every attempt is refused
    env = {
        "CALLBRIDGE_CALLBACK_TIMEOUT_S": "1",
        "CALLBRIDGE_CALLBACK_LEASE_S": "3",
        "CALLBRIDGE_LEASE_TTL_S": "2",
        "CALLBRIDGE_HEARTBEAT_INTERVAL_S": "0.5",
        "CALLBRIDGE_RECONCILE_INTERVAL_S": "0.5",
    }
    server = Server(
        "cb-crash",
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path,
        config=config,
        env=env,
    )
    server.start()
    try:
        await server.wait_ready()
        async with httpx.AsyncClient(timeout=10) as client:
            sids = []
            for i in range(CALLS):
                customer = f"+91980000{i:04d}"
                await set_phone(client, server, customer, AUTH, outcome="busy", answer_after=0)
                r = await client.post(
                    f"{server.base_url}/v3/accounts/acme/calls",
                    headers=AUTH,
                    json={
                        "from": {"contact_uri": f"+91970000{i:04d}"},
                        "to": {"contact_uri": customer},
                        "virtual_number": "+912241499102",
                        "status_callback": [
                            {"event": "terminal", "url": receiver.url(f"/hook/{k}")}
                            for k in range(CALLBACKS_PER_CALL)
                        ],
                    },
                )
                assert r.status_code == 200, r.text
                sids.append(r.json()["response"]["call_details"]["sid"])
            # Wait until every call has ended, so all 1,000 events are committed.
            deadline = time.monotonic() + 30
            for sid in sids:
                while True:
                    r = await client.get(
                        f"{server.base_url}/v3/accounts/acme/calls/{sid}", headers=AUTH
                    )
                    if r.json()["response"]["call_details"]["state"] == "terminal":
                        break
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        server.kill()  # SIGKILL: no graceful shutdown, deliveries in every state
        await receiver.start()
        server.start()
        await server.wait_ready()
        deadline = time.monotonic() + 60
        while True:
            seen = Counter(r.event_sid for r in receiver.requests)
            if len(seen) >= CALLS * CALLBACKS_PER_CALL or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        server.kill(15)
        await receiver.stop()
    seen = Counter(r.event_sid for r in receiver.requests)
    duplicates = sum(n - 1 for n in seen.values())
    print(f"delivered {len(seen)} distinct events, {duplicates} duplicates")
    assert len(seen) == CALLS * CALLBACKS_PER_CALL
    bodies = {json.loads(r.body)["call_details"]["sid"] for r in receiver.requests}
    assert bodies == set(sids)
