"""SIP driver benchmark on loopback against SIPp: bridged sessions per host, CPU and memory per
session, INVITE→answer latency p50/p99 and sustained sessions/s — with SIPp-to-SIPp direct
measured in the same run as the baseline.

Run: .venv/bin/python bench/sip.py [--workers 8] [--hold 10] [--rate 4] [--rate-seconds 20]
Needs `sipp` (Debian sip-tester) and pjsua2. Bounded: about 1-2 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sip.sipp import free_port, start_sipp

from callbridge.settings import Settings
from callbridge.telephony.base import CapacityExhausted, DialRequest, LegEvent, LegEventKind
from callbridge.telephony.sip import SipDriver

FAILURES = {LegEventKind.BUSY, LegEventKind.REJECTED, LegEventKind.FAILED, LegEventKind.NO_ANSWER}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def baseline(workdir: Path, rate: int, seconds: int) -> tuple[list[float], int, int]:
    """SIPp UAC → SIPp UAS directly: INVITE→200 times (ms), successes, failures."""
    uas = start_sipp(
        "uas_answer_echo.xml",
        workdir / "base-uas",
        calls=100000,
        pause_ms=0,
        timeout_s=seconds + 30,
        rtp_echo=True,
    )
    calls = rate * seconds
    uac = start_sipp(
        "uac_call.xml",
        workdir / "base-uac",
        remote=f"127.0.0.1:{uas.port}",
        calls=calls,
        timeout_s=seconds + 20,
        pause_ms=1000,
        tone_hz=600,
        keys={"caller": "919900000001"},
        extra=["-r", str(rate), "-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-fd", "1"],
    )
    try:
        uac.wait(seconds + 25)
    finally:
        uac.stop()
        uas.stop()
    times: list[float] = []
    for path in uac.workdir.glob("*_rtt.csv"):
        with path.open() as handle:
            for row in csv.reader(handle, delimiter=";"):
                if len(row) >= 3 and row[2].replace(".", "", 1).isdigit():
                    times.append(float(row[2]))
    ok = failed = 0
    for path in uac.workdir.glob("*_.csv"):
        rows = list(csv.reader(path.open(), delimiter=";"))
        if len(rows) >= 2:
            header, last = rows[0], rows[-1]
            ok = int(last[header.index("SuccessfulCall(C)")])
            failed = int(last[header.index("FailedCall(C)")])
    return times, ok, failed


class Bench:
    def __init__(self, driver: SipDriver, target: str) -> None:
        self.driver = driver
        self.target = target
        self.sent: dict[str, float] = {}
        self.answered: dict[str, asyncio.Future[float]] = {}
        self.latencies_ms: list[float] = []
        self.failures: list[LegEvent] = []
        self.capacity_refusals = 0
        self.seq = 0

    def on_event(self, event: LegEvent) -> None:
        future = self.answered.get(event.leg_sid)
        if event.kind is LegEventKind.ANSWERED:
            started = self.sent.get(event.leg_sid)
            if started is not None:
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())
        elif event.kind in FAILURES or event.kind is LegEventKind.HANGUP:
            self.failures.append(event)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(f"{event.kind}: {event.reason}"))

    async def leg(self, leg_sid: str, call_sid: str) -> None:
        self.answered[leg_sid] = asyncio.get_running_loop().create_future()
        self.sent[leg_sid] = time.perf_counter()
        await self.driver.dial(
            DialRequest(leg_sid, call_sid, "bench", self.target, "+912241499102", 10.0)
        )
        await asyncio.wait_for(self.answered[leg_sid], 10.0)

    async def session(self) -> tuple[str, str] | None:
        self.seq += 1
        call = f"C{self.seq}"
        a, b = f"{call}a", f"{call}b"
        try:
            await self.leg(a, call)
            await self.leg(b, call)
            await self.driver.bridge(a, b)
        except CapacityExhausted:
            self.capacity_refusals += 1
            await self.end(a, b)
            return None
        return a, b

    async def end(self, a: str, b: str) -> None:
        await self.driver.hangup(a)
        await self.driver.hangup(b)


def processes(driver: SipDriver) -> list[psutil.Process]:
    return [psutil.Process(os.getpid())] + [psutil.Process(pid) for pid in driver.worker_pids()]


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="callbridge-bench-sip-"))
    print(f"host: {psutil.cpu_count()} cores; workers={args.workers}")

    t0 = time.monotonic()
    base_times, base_ok, base_failed = await asyncio.to_thread(baseline, workdir, 10, 6)
    print(
        f"baseline SIPp→SIPp: {base_ok} calls ok, {base_failed} failed; INVITE→200 "
        f"p50={pct(base_times, 0.5):.2f} ms p99={pct(base_times, 0.99):.2f} ms "
        f"({time.monotonic() - t0:.0f}s)"
    )

    uas = start_sipp(
        "uas_answer_echo.xml",
        workdir / "uas",
        calls=1000000,
        pause_ms=0,
        timeout_s=300,
        rtp_echo=True,
    )
    rtp_min = free_port(60 * args.workers, step=2)
    sip_base = free_port(args.workers)
    settings = Settings(
        sip_port=sip_base,
        sip_rtp_port_min=rtp_min,
        sip_rtp_port_max=rtp_min + 60 * args.workers * 2 - 1,
        sip_workers=args.workers,
        log_level="WARNING",
    )
    driver = SipDriver(settings)
    bench = Bench(driver, f"sip:bench@127.0.0.1:{uas.port}")
    try:
        started = time.perf_counter()
        await driver.start(bench.on_event)
        print(
            f"driver start: {(time.perf_counter() - started) * 1000:.0f} ms, "
            f"capacity={driver.capacity()} legs"
        )
        procs = processes(driver)
        idle_rss = sum(p.memory_info().rss for p in procs)

        # Phase 1: as many concurrent bridged sessions as the pool holds.
        target = (driver.capacity() or 0) // 2
        results = await asyncio.gather(
            *(bench.session() for _ in range(target)), return_exceptions=True
        )
        live = [r for r in results if isinstance(r, tuple)]
        errors = [r for r in results if isinstance(r, BaseException)]
        for p in procs:
            p.cpu_percent(None)
        await asyncio.sleep(args.hold)
        cpu = sum(p.cpu_percent(None) for p in procs)
        rss = sum(p.memory_info().rss for p in procs)
        n = max(1, len(live))
        print(f"concurrent bridged sessions: {len(live)}/{target} ({len(errors)} errors)")
        print(
            f"  CPU total {cpu:.1f}% of one core → {cpu / n:.2f}% per session; "
            f"RSS {rss / 2**20:.0f} MiB ({idle_rss / 2**20:.0f} idle) → "
            f"{rss / 2**20 / n:.1f} MiB per session"
        )
        await asyncio.gather(*(bench.end(a, b) for a, b in live))
        await asyncio.sleep(1.0)
        phase1_latency = list(bench.latencies_ms)

        # Phase 2: sustained rate of new sessions, each held 1 s.
        bench.failures.clear()
        bench.latencies_ms.clear()
        done = 0
        sessions: set[asyncio.Task[None]] = set()

        async def one() -> None:
            nonlocal done
            pair = await bench.session()
            if pair is not None:
                await asyncio.sleep(1.0)
                await bench.end(*pair)
                done += 1

        rate_started = time.perf_counter()
        interval = 1.0 / args.rate
        for i in range(int(args.rate * args.rate_seconds)):
            delay = rate_started + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            sessions.add(task)
            task.add_done_callback(sessions.discard)
        results2 = await asyncio.gather(*list(sessions), return_exceptions=True)
        elapsed = time.perf_counter() - rate_started
        errors2 = [r for r in results2 if isinstance(r, BaseException)]
        ours = [e for e in bench.failures if e.kind is not LegEventKind.HANGUP]
        print(
            f"sustained: {done} sessions in {elapsed:.1f}s = {done / elapsed:.2f} sessions/s "
            f"({2 * done / elapsed:.2f} calls/s); failures={len(ours)} errors={len(errors2)} "
            f"capacity refusals={bench.capacity_refusals}"
        )
        lat = phase1_latency + bench.latencies_ms
        p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
        print(
            f"dial→answered (INVITE→200 via API process): p50={p50:.2f} ms p99={p99:.2f} ms "
            f"over {len(lat)} legs"
        )
        base50, base99 = pct(base_times, 0.5), pct(base_times, 0.99)
        if base_times and base50 > 0:
            ratio99 = p99 / max(base99, 1e-3)
            print(f"ratio vs SIPp direct: p50 x{p50 / base50:.1f}, p99 x{ratio99:.1f}")
        print(f"total bench time {time.monotonic() - t0:.0f}s")
    finally:
        await driver.stop()
        uas.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=4.0, help="new bridged sessions per second")
    parser.add_argument("--rate-seconds", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(asyncio.wait_for(run(args), 150))


if __name__ == "__main__":
    main()
