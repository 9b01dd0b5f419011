"""Inbound routing throughput on the simulated carrier with 100 agents, against a baseline of
click-to-calls through the same engine, store and driver measured in the same run.

Prints inbound calls/s (admit → route → ring → bridge → end), the p50/p99 time from the
customer's call to the first agent leg being dialled (ringing starts), and the ratios.

    .venv/bin/python bench/inbound.py [--calls 600] [--concurrency 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from callbridge.api.app import create_app
from callbridge.clock import SystemClock
from callbridge.config import apply_config, parse_config
from callbridge.domain.calls import Call, CallState
from callbridge.domain.options import CallOptions
from callbridge.engine.admission import ClickToCall, admit_click_to_call
from callbridge.numbers import normalise
from callbridge.settings import Settings
from callbridge.store import accounts as account_store
from callbridge.store.repo import Store
from callbridge.store.tables import users as users_table
from callbridge.telephony.base import DialRequest
from callbridge.telephony.sim import Behaviour, Outcome, SimulatedCarrier

AGENTS = 100
TALK_S = 0.2
"""Agents answer after 10 ms and hang up after this long; customers never hang up."""
EXOPHONE = "+912241499102"
KEY, TOKEN = "k_bench", "t_bench"


def agent(i: int) -> str:
    return f"+9199000{i:05d}"


def customer(i: int) -> str:
    return f"+9198{i:08d}"


def config() -> str:
    parts = [
        f"""
[[accounts]]
sid = "bench"
api_key = "{KEY}"
api_token = "{TOKEN}"
rate_limit_per_minute = 0
exophones = ["{EXOPHONE}"]
"""
    ]
    for i in range(1, AGENTS + 1):
        parts.append(
            f"""
[[accounts.users]]
first_name = "Agent"
last_name = "N{i}"
email = "agent{i}@bench.example.com"
[[accounts.users.devices]]
contact_uri = "{agent(i)}"
available = true
verified = true
"""
        )
    return "".join(parts)


class TimedCarrier(SimulatedCarrier):
    """The simulated carrier, noting when each call's first leg is dialled."""

    def __init__(self, clock: SystemClock) -> None:
        super().__init__(clock)
        self.first_dial: dict[str, float] = {}

    async def dial(self, request: DialRequest) -> None:
        self.first_dial.setdefault(request.call_sid, time.perf_counter())
        await super().dial(request)


class Terminals:
    """Futures resolved when a call commits its terminal state."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.waiting: dict[str, asyncio.Future[None]] = {}

    def __call__(self, call: Call) -> None:
        if call.state is CallState.TERMINAL:
            self.done.add(call.sid)
            future = self.waiting.pop(call.sid, None)
            if future is not None and not future.done():
                future.set_result(None)

    async def wait(self, sid: str) -> None:
        if sid in self.done:
            return
        future = asyncio.get_running_loop().create_future()
        self.waiting[sid] = future
        await asyncio.wait_for(future, 60)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(calls: int, concurrency: int, database_url: str | None) -> dict[str, Any]:
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        store = Store(url)
        settings = Settings(allow_private_urls=True, log_level="ERROR", database_url=url)
        driver = TimedCarrier(clock)
        for i in range(1, AGENTS + 1):
            driver.set_behaviour(agent(i), Behaviour(Outcome.ANSWER, 0.01, TALK_S))
        for i in range(calls):
            driver.set_behaviour(customer(i), Behaviour(Outcome.ANSWER, 0.01, None))
        app = create_app(settings, driver=driver, store=store, clock=clock, run_background=False)
        async with app.router.lifespan_context(app):
            await apply_config(store, parse_config(config()), clock)
            svc = app.state.services
            terminals = Terminals()
            svc.engine.add_listener(terminals)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench", auth=(KEY, TOKEN)
            ) as client:
                r = await client.post("/v2/accounts/bench/groups", json={"name": "all"})
                group_id = r.json()["response"]["data"]["id"]
                async with store.read() as conn:
                    ids = [row[0] for row in await conn.execute(select(users_table.c.id))]
                await client.post(
                    f"/v2/accounts/bench/groups/{group_id}/users", json={"user_ids": ids}
                )
                r = await client.post(
                    "/v2/accounts/bench/flows",
                    json={
                        "name": "bench",
                        "connect": {
                            "destinations": [{"group_id": group_id}],
                            "strategy": "round_robin",
                        },
                    },
                )
                flow_id = r.json()["response"]["data"]["id"]
                await client.put(
                    f"/v2/accounts/bench/exophones/{EXOPHONE}", json={"flow_id": flow_id}
                )
            start_inbound = svc.extras["start_inbound"]
            async with store.read() as conn:
                account = await account_store.get_account(conn, "bench")
            assert account is not None

            async def inbound_one(i: int) -> float:
                t0 = time.perf_counter()
                sid = await start_inbound(customer(i), EXOPHONE)
                await terminals.wait(sid)
                return driver.first_dial[sid] - t0

            async def outbound_one(i: int, slot: int) -> float:
                t0 = time.perf_counter()
                call = await admit_click_to_call(
                    svc.engine,
                    ClickToCall(
                        account=account,
                        from_uri=normalise(agent(slot + 1)),
                        to_uri=normalise(customer(i)),
                        virtual_number=EXOPHONE,
                        options=CallOptions(),
                    ),
                )
                await terminals.wait(call.sid)
                return driver.first_dial[call.sid] - t0

            async def drive(kind: str) -> tuple[float, list[float]]:
                queue: asyncio.Queue[int] = asyncio.Queue()
                for i in range(calls):
                    queue.put_nowait(i)
                latencies: list[float] = []

                async def worker(slot: int) -> None:
                    while not queue.empty():
                        i = queue.get_nowait()
                        if kind == "inbound":
                            latencies.append(await inbound_one(i))
                        else:
                            latencies.append(await outbound_one(i, slot))

                started = time.perf_counter()
                await asyncio.gather(*(worker(s) for s in range(concurrency)))
                return time.perf_counter() - started, latencies

            out_s, out_lat = await drive("outbound")
            in_s, in_lat = await drive("inbound")
            await svc.engine.settle()
        await store.close()
    return {
        "calls": calls,
        "concurrency": concurrency,
        "outbound_per_s": calls / out_s,
        "inbound_per_s": calls / in_s,
        "inbound_first_ring_p50_ms": statistics.median(in_lat) * 1000,
        "inbound_first_ring_p99_ms": pct(in_lat, 0.99) * 1000,
        "outbound_first_dial_p99_ms": pct(out_lat, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    if args.concurrency > AGENTS:
        parser.error(f"--concurrency must be at most {AGENTS} (one agent per outbound call)")
    logging.basicConfig(level=logging.ERROR)
    r = asyncio.run(run(args.calls, args.concurrency, args.database_url))
    print(f"inbound routing bench: {AGENTS} agents, {r['calls']} calls, {r['concurrency']} at once")
    print(f"  baseline click-to-call     : {r['outbound_per_s']:8.1f} calls/s")
    print(f"  inbound (round robin)      : {r['inbound_per_s']:8.1f} calls/s")
    print(f"  ratio inbound/outbound     : {r['inbound_per_s'] / r['outbound_per_s']:8.2f}")
    print(f"  first agent ringing p50    : {r['inbound_first_ring_p50_ms']:8.1f} ms")
    print(f"  first agent ringing p99    : {r['inbound_first_ring_p99_ms']:8.1f} ms")
    print(f"  outbound first dial p99    : {r['outbound_first_dial_p99_ms']:8.1f} ms")


if __name__ == "__main__":
    main()
