"""Benchmark: concurrent bridged calls held by one process on the simulated carrier.

Ramps up N state-managed click-to-calls (real engine, real SQLite file, system clock), holds
them bridged while extra short calls churn through the same engine, and reports peak RSS,
memory per call, and timer lateness (the simulated carrier's own timers plus 10 ms probe
timers) against the idle lateness measured at the start of the same run.

Goal: 10,000 bridged calls held at once with RSS <= 1 GiB and timer lateness p99 <= 50 ms.
Usage: `.venv/bin/python bench/sim_capacity.py [--calls N] [--hold S] [--churn PER_S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from _lease import bench_lease, hold_lease

from callbridge.clock import SystemClock
from callbridge.config import apply_config, parse_config
from callbridge.domain.options import CallOptions
from callbridge.engine.admission import ClickToCall, admit_click_to_call
from callbridge.engine.core import CallEngine
from callbridge.engine.outbound import OutboundRunner, Phase
from callbridge.gcpolicy import GcPolicy
from callbridge.numbers import normalise
from callbridge.store import accounts as account_store
from callbridge.store.repo import Store
from callbridge.store.schema import upgrade_to_head
from callbridge.telephony.sim import Behaviour, Outcome, SimulatedCarrier

CONFIG = """
[[accounts]]
sid = "bench"
api_key = "bench_key"
api_token = "bench_token"
rate_limit_per_minute = 0
exophones = ["+912241499102"]
"""


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def probe_lateness(
    clock: SystemClock, seconds: float, interval_s: float = 0.01
) -> list[float]:
    samples: list[float] = []
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        due = clock.monotonic() + interval_s
        await clock.sleep(interval_s)
        samples.append(max(0.0, clock.monotonic() - due))
    return samples


def bridged(engine: CallEngine) -> int:
    return sum(
        1
        for r in engine._runners.values()
        if isinstance(r, OutboundRunner) and r.phase is Phase.BRIDGED
    )


async def main(calls: int, hold_s: float, churn_per_s: float) -> int:
    clock = SystemClock()
    with tempfile.TemporaryDirectory(prefix="callbridge-cap-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'cap.db'}"
        await asyncio.to_thread(upgrade_to_head, url)
        store = Store(url)
        await apply_config(store, parse_config(CONFIG), clock)
        async with store.read() as conn:
            account = await account_store.get_account(conn, "bench")
        assert account is not None
        sim = SimulatedCarrier(clock)
        engine = CallEngine(
            store=store, driver=sim, clock=clock, lease=bench_lease(store, clock, "bench-node")
        )
        lease = await hold_lease(engine)
        await engine.start()
        gc_policy = GcPolicy()
        gc_policy.start()

        gc.collect()
        idle = await probe_lateness(clock, 2.0)
        rss_before = rss_mib()
        print(
            f"idle: RSS {rss_before:.0f} MiB, probe lateness p50 {pct(idle, 50):.2f} ms "
            f"p99 {pct(idle, 99):.2f} ms"
        )

        options = CallOptions(state_management=True)
        vn = "+912241499102"

        async def place(i: int, *, churn: bool = False) -> None:
            agent = normalise(f"+9190{i:08d}")
            customer = normalise(f"+9180{i:08d}")
            if churn:
                sim.set_behaviour(customer.uri, Behaviour(Outcome.ANSWER, 0.5, 2.0))
            await admit_click_to_call(
                engine,
                ClickToCall(account, agent, customer, vn, options),
            )

        started = time.perf_counter()
        cpu_started, main_started = time.process_time(), time.thread_time()
        batch = 250
        for first in range(0, calls, batch):
            await asyncio.gather(*(place(i) for i in range(first, min(calls, first + batch))))
        admitted_s = time.perf_counter() - started
        deadline = time.perf_counter() + 120
        while bridged(engine) < calls and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.25)
        ramp_s = time.perf_counter() - started
        ramp_cpu_us = (time.process_time() - cpu_started) / calls * 1e6
        ramp_main_us = (time.thread_time() - main_started) / calls * 1e6
        held = bridged(engine)
        print(
            f"ramp: {calls} calls admitted in {admitted_s:.1f} s "
            f"({calls / admitted_s:.0f}/s); {held} bridged after {ramp_s:.1f} s"
        )
        print(
            "ramp CPU per call (admit, ring, answer, dial, ring, bridge): "
            f"{ramp_main_us:.0f} us on the event loop, {ramp_cpu_us:.0f} us in all threads"
        )

        sim.timer_lateness_s = []
        churn_index = calls
        stop_churn = asyncio.Event()

        async def churn() -> None:
            nonlocal churn_index
            while not stop_churn.is_set():
                await place(churn_index, churn=True)
                churn_index += 1
                await asyncio.sleep(1 / churn_per_s)

        churner = asyncio.create_task(churn()) if churn_per_s > 0 else None
        probes = await probe_lateness(clock, hold_s)
        stop_churn.set()
        if churner is not None:
            await churner
        peak_held = bridged(engine)
        rss_peak = rss_mib()
        sim_lateness = list(sim.timer_lateness_s)
        sim.timer_lateness_s = None
        all_lateness = probes + sim_lateness

        stop_started = time.perf_counter()
        rejoins = lease.rejoins
        await engine.stop()
        await gc_policy.stop()
        await lease.stop()
        stop_s = time.perf_counter() - stop_started
        await store.close()

    per_call_kib = (rss_peak - rss_before) * 1024 / max(1, held)
    late_p99 = pct(all_lateness, 99)
    idle_p99 = pct(idle, 99)
    print(
        f"hold {hold_s:.0f} s with churn {churn_per_s:.0f} calls/s: bridged held "
        f"{peak_held} (>= {held} of the ramp), {churn_index - calls} churn calls"
    )
    print(f"RSS peak {rss_peak:.0f} MiB (goal <= 1024), {per_call_kib:.1f} KiB per held call")
    print(
        f"timer lateness: probes p50 {pct(probes, 50):.2f} ms p99 {pct(probes, 99):.2f} ms; "
        f"sim timers n={len(sim_lateness)} p99 {pct(sim_lateness, 99):.2f} ms; "
        f"all p99 {late_p99:.2f} ms (goal <= 50)"
    )
    ratio = late_p99 / idle_p99 if idle_p99 > 0 else float("inf")
    print(f"lateness p99 vs idle baseline: {ratio:.1f}x; shutdown of all calls took {stop_s:.1f} s")
    print(f"node lease: {'kept' if rejoins == 0 else f'LOST {rejoins} time(s)'} under the load")
    ok = held >= calls and rss_peak <= 1024 and late_p99 <= 50 and rejoins == 0
    print("goals met" if ok else "goals NOT met")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--churn", type=float, default=50.0)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.calls, args.hold, args.churn)))
