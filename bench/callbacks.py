"""Benchmark: status-callback deliveries per second and event→delivery latency (p50/p99) of the
DeliveryWorker on a SQLite file, against raw httpx POSTs to the same receiver in the same run.

The receiver runs in a child process on 127.0.0.1 and measures latency from the `enqueued_at`
wall time each event carries to the moment its request arrives. Goals: ≥ 1,000 deliveries/s,
p99 ≤ 200 ms at a steady 200 events/s (100 calls/s x answered + terminal).
Usage: `.venv/bin/python bench/callbacks.py [--events N] [--rate R] [--seconds S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# --- receiver (child process) --------------------------------------------------------------

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _ReceiverProtocol(asyncio.Protocol):
    latencies: list[float] = []  # one list for the whole child process

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(self._handle(head, body))

    arrivals: dict[str, float] = {}  # event sid -> wall time it arrived

    def _handle(self, head: bytes, body: bytes) -> bytes:
        target = head.split(b" ", 2)[1]
        if target == b"/stats":
            out = json.dumps({"latencies": self.latencies, "arrivals": self.arrivals}).encode()
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out)
        if target == b"/reset":
            self.latencies.clear()
            self.arrivals.clear()
            return _OK
        for line in head.split(b"\r\n")[1:]:
            if line[:19].lower() == b"x-exotel-event-sid:":
                self.arrivals.setdefault(line[19:].strip().decode(), time.time())
        if body:
            sent = json.loads(body)["call_details"].get("enqueued_at")
            if sent is not None:
                self.latencies.append(time.time() - sent)
        return _OK


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_ReceiverProtocol, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


# --- the benchmark -------------------------------------------------------------------------


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def _receiver_stats(base: str) -> list[float]:
    return (await _receiver_data(base))[0]


async def _receiver_data(base: str) -> tuple[list[float], dict[str, float]]:
    import httpx

    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/stats")
        data = response.json()
        await client.post(f"{base}/reset")
    return data["latencies"], data["arrivals"]


ENGINE_CONFIG = """
[[accounts]]
sid = "bench"
api_key = "bench_key"
api_token = "bench_token"
rate_limit_per_minute = 0
exophones = ["+912241499102"]
"""


async def _engine_phase(
    tmp: Path, url: str, base: str, rate: float, seconds: float
) -> tuple[list[float], int, float]:
    """Real calls through the engine at `rate` calls/s, each with an answered and a terminal
    callback; latency = arrival at the receiver - the event's commit-time timestamp."""
    from _lease import bench_lease, hold_lease
    from sqlalchemy import select

    from callbridge.clock import SystemClock
    from callbridge.config import apply_config, parse_config
    from callbridge.domain.options import CallbackEvent, CallOptions, StatusCallback
    from callbridge.engine.admission import ClickToCall, admit_click_to_call
    from callbridge.engine.core import CallEngine
    from callbridge.numbers import normalise
    from callbridge.store import accounts as account_store
    from callbridge.store.repo import Store, utc_required
    from callbridge.store.schema import upgrade_to_head
    from callbridge.store.tables import outbox
    from callbridge.telephony.sim import Behaviour, Outcome, SimulatedCarrier
    from callbridge.webhooks.ssrf import UrlGuard
    from callbridge.webhooks.worker import DeliveryWorker

    db_url = f"sqlite+aiosqlite:///{tmp / 'engine.db'}"
    await asyncio.to_thread(upgrade_to_head, db_url)
    clock = SystemClock()
    store = Store(db_url)
    await apply_config(store, parse_config(ENGINE_CONFIG), clock)
    async with store.read() as conn:
        account = await account_store.get_account(conn, "bench")
    assert account is not None
    sim = SimulatedCarrier(clock)
    worker = DeliveryWorker(
        store.write_engine,
        clock,
        "bench",
        secret_lookup=__import__(
            "callbridge.webhooks.secrets", fromlist=["make_secret_lookup"]
        ).make_secret_lookup(store.write_engine),
        guard=UrlGuard(True),
    )
    engine = CallEngine(
        store=store,
        driver=sim,
        clock=clock,
        lease=bench_lease(store, clock, "bench"),
        on_committed=worker.wake,
    )
    lease = await hold_lease(engine)
    await engine.start()
    task = asyncio.create_task(worker.run())
    options = CallOptions(
        state_management=True,
        status_callbacks=(
            StatusCallback(CallbackEvent.ANSWERED, url),
            StatusCallback(CallbackEvent.TERMINAL, url),
        ),
    )
    calls = int(rate * seconds)
    t0 = time.perf_counter()
    lag_max = 0.0
    placed: list[asyncio.Task[Any]] = []
    for i in range(calls):
        # Each call is its own client, as with the API: admissions overlap and share commits.
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag_max = max(lag_max, -delay)
        customer = normalise(f"+9180{i:08d}")
        sim.set_behaviour(customer.uri, Behaviour(Outcome.ANSWER, 0.1, 0.5))
        request = ClickToCall(
            account, normalise(f"+9190{i:08d}"), customer, "+912241499102", options
        )
        placed.append(asyncio.create_task(admit_click_to_call(engine, request)))
    await asyncio.gather(*placed)
    while engine.active_calls:  # noqa: ASYNC110 - polling the engine is the point here
        await asyncio.sleep(0.05)
    deadline = time.perf_counter() + 60
    while await _pending(store.write_engine) and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await worker.stop()
    await task
    await engine.stop()
    await lease.stop()
    _, arrivals = await _receiver_data(base)
    async with store.read() as conn:
        rows = (await conn.execute(select(outbox.c.event_sid, outbox.c.created_at))).all()
    await store.close()
    latencies = [
        arrivals[sid] - utc_required(created).timestamp()
        for sid, created in rows
        if sid in arrivals
    ]
    return latencies, len(rows), lag_max


async def _baseline(url: str, total: int, concurrency: int) -> float:
    """Raw httpx POSTs of the same body (default transport, no guard, no DB): requests/s."""
    import httpx

    body = json.dumps(
        {"event_details": {"event_type": "terminal"}, "call_details": {"sid": "x" * 32}}
    ).encode()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        queue = iter(range(total))

        async def loop() -> None:
            for _ in queue:
                response = await client.post(url, content=body)
                assert response.status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def _engine(path: Path) -> Any:
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    return engine


async def _enqueue(engine: Any, url: str, call_sid: str, events: list[str]) -> None:
    from callbridge.domain.options import CallbackEvent, StatusCallback
    from callbridge.store.outbox import enqueue_events

    callbacks = [StatusCallback(CallbackEvent(e), url) for e in events]
    async with engine.begin() as conn:
        for e in events:
            await enqueue_events(
                conn,
                account_sid="bench",
                call_sid=call_sid,
                event_type=e,
                callbacks=callbacks,
                call_details={"sid": call_sid, "status": e, "enqueued_at": time.time()},
                now=_now(),
            )


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def _wait_drained(engine: Any, timeout_s: float = 300.0) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if not await _pending(engine):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the outbox did not drain")


async def _pending(engine: Any) -> int:
    from callbridge.store.outbox_log import count_by_status

    async with engine.connect() as conn:
        return (await count_by_status(conn))["pending"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000, help="backlog size for throughput")
    parser.add_argument("--rate", type=float, default=100.0, help="calls/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    from callbridge.clock import SystemClock
    from callbridge.store.tables import accounts, metadata
    from callbridge.webhooks.signing import new_secret
    from callbridge.webhooks.ssrf import UrlGuard
    from callbridge.webhooks.worker import DeliveryWorker

    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    port = int((await proc.stdout.readline()).decode())
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/hook"
    try:
        with tempfile.TemporaryDirectory(prefix="callbridge-bench-") as tmp:
            engine = _engine(Path(tmp) / "callbridge.db")
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                await conn.execute(
                    accounts.insert().values(
                        sid="bench",
                        api_key="k",
                        api_token_hash="x",
                        webhook_secret=new_secret(),
                        created_at=_now(),
                        updated_at=_now(),
                    )
                )

            baseline = await _baseline(url, args.events, args.concurrency)
            baseline_8 = await _baseline(url, args.events, 8)
            await _receiver_stats(base)

            def make_worker() -> DeliveryWorker:
                from callbridge.webhooks.secrets import make_secret_lookup

                return DeliveryWorker(
                    engine,
                    SystemClock(),
                    "bench",
                    secret_lookup=make_secret_lookup(engine),
                    guard=UrlGuard(True),
                    concurrency=args.concurrency,
                )

            # 1. Throughput: a backlog of single-event calls, drained by a running worker.
            for start in range(0, args.events, 250):
                async with engine.begin() as conn:
                    from callbridge.domain.options import CallbackEvent, StatusCallback
                    from callbridge.store.outbox import enqueue_events

                    for i in range(start, min(start + 250, args.events)):
                        await enqueue_events(
                            conn,
                            account_sid="bench",
                            call_sid=f"c{i}",
                            event_type="terminal",
                            callbacks=[StatusCallback(CallbackEvent.TERMINAL, url)],
                            call_details={"sid": f"c{i}"},
                            now=_now(),
                        )
            worker = make_worker()
            started = time.perf_counter()
            task = asyncio.create_task(worker.run())
            worker.wake()
            await _wait_drained(engine)
            elapsed = time.perf_counter() - started
            await worker.stop()
            await task
            throughput = worker.stats.delivered / elapsed
            drain_stats = worker.stats
            await _receiver_stats(base)

            # 2. Latency with the engine: real calls at a steady rate through the call engine
            #    and the simulated carrier; callbacks written by the engine's commits.
            engine_latencies, engine_events, engine_lag = await _engine_phase(
                Path(tmp), url, base, args.rate, args.seconds
            )

            # 3. Latency of the worker alone: events enqueued at the same rate, each in its
            #    own transaction (as the engine does), waking the worker after commit.
            worker = make_worker()
            task = asyncio.create_task(worker.run())
            calls = int(args.rate * args.seconds)
            t0 = time.perf_counter()
            lag_max = 0.0
            for i in range(calls):
                due = t0 + i / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lag_max = max(lag_max, -delay)
                for event in ("answered", "terminal"):
                    await _enqueue(engine, url, f"l{i}", [event])
                    worker.wake()
            await _wait_drained(engine)
            await worker.stop()
            await task
            latencies = await _receiver_stats(base)
            await engine.dispose()
    finally:
        proc.terminate()
        await proc.wait()

    print(
        f"baseline raw httpx POSTs      {baseline:9.1f} req/s  "
        f"(stock client, {args.concurrency} conns)"
    )
    print(f"baseline raw httpx POSTs      {baseline_8:9.1f} req/s  (stock client, 8 conns)")
    print(
        f"worker backlog drain          {throughput:9.1f} deliveries/s  "
        f"n={args.events}  ratio {throughput / baseline:.2f}x / {throughput / baseline_8:.2f}x "
        f"of the baselines  claims={drain_stats.claims} flushes={drain_stats.flushes}  "
        f"(goal >= 1000/s: {'OK' if throughput >= 1000 else 'MISSED'})"
    )
    e50, e99 = _pct(engine_latencies, 50), _pct(engine_latencies, 99)
    print(
        f"engine at {args.rate:.0f} calls/s for {args.seconds:.0f} s (answered + terminal each): "
        f"event->delivery p50 {e50:.1f} ms  p99 {e99:.1f} ms  "
        f"delivered {len(engine_latencies)}/{engine_events}  call start lag max "
        f"{engine_lag * 1000:.1f} ms  (goal p99 <= 200 ms: {'OK' if e99 <= 200 else 'MISSED'})"
    )
    p50, p99 = _pct(latencies, 50), _pct(latencies, 99)
    print(
        f"steady {args.rate * 2:.0f} events/s ({args.rate:.0f} calls/s x 2) for {args.seconds:.0f}"
        f" s: event->delivery p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {_pct(latencies, 100):.1f}"
        f" ms  n={len(latencies)}/{calls * 2}  enqueue lag max {lag_max * 1000:.1f} ms  "
        f"(goal p99 <= 200 ms: {'OK' if p99 <= 200 else 'MISSED'})"
    )


if __name__ == "__main__":
    if "--serve" in sys.argv:
        asyncio.run(_serve())
    else:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
        asyncio.run(main())
