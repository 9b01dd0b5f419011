"""SIP capacity benchmark: a real `callbridge serve --driver sip` on loopback, SIPp as every
agent and every customer (both legs answer and echo RTP), click-to-calls placed through the
API at a steady rate and held, some recorded and some streamed to a WebSocket bot. It reports
bridged sessions held, CPU per session, RSS (API process + media workers), click-to-call →
answered p50/p99, setup rate, failures, GET /calls/{sid} latency during the hold, and a
same-run baseline of SIPp calling SIPp with the same RTP load; then a verdict per goal.

Run: .venv/bin/python bench/sip.py [--sessions 400] [--recorded 100] [--streamed 20]
     [--workers 4] [--rate 40] [--hold 30]
Needs `sipp` (Debian sip-tester) and pjsua2 (`make pjsua2`). Bounded: about 2-3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import miniaudio
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _bot import bot_stats, start_bot, stop_bot  # noqa: E402
from _control import start_control, stop_control  # noqa: E402
from _server import callbridge_server  # noqa: E402
from _sip_baseline import pct, run_baseline  # noqa: E402
from tests.sip.sipp import free_port, port_free, start_sipp  # noqa: E402
from tests.webhooks.helpers import Received, Receiver, Reply  # noqa: E402

KEY, TOKEN, EXOPHONE = "k_bench", "t_bench", "+912241499102"
CONFIG = f"""
[[accounts]]
sid = "bench"
api_key = "{KEY}"
api_token = "{TOKEN}"
allow_voip = true
rate_limit_per_minute = 0
exophones = ["{EXOPHONE}"]
"""
ANSWER_WAIT_S = 20.0
"""How long after the last click-to-call every session may take to be answered."""
GOAL_SESSIONS, GOAL_RECORDED, GOAL_STREAMED, GOAL_GET_P99_MS = 400, 100, 20, 50.0


@dataclass
class Session:
    sid: str
    posted_at: float
    recorded: bool
    streamed: bool
    answered_at: float | None = None
    terminal: dict[str, Any] | None = None
    terminal_at: float | None = None


@dataclass
class Run:
    sessions: dict[str, Session] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    deliveries: int = 0
    event_sids: set[str] = field(default_factory=set)

    def on_callback(self, request: Received) -> Reply:
        self.deliveries += 1
        self.event_sids.add(request.event_sid)
        body = json.loads(request.body)
        details = body["call_details"]
        session = self.sessions.get(details["sid"])
        if session is not None:
            if body["event_details"]["event_type"] == "answered":
                session.answered_at = session.answered_at or time.monotonic()
            else:
                session.terminal, session.terminal_at = details, time.monotonic()
            self.changed.set()
        return Reply()

    async def wait(self, done: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
        return True


def free_block(count: int) -> int:
    """The first base in 10000-32000 with `count` free ports after it."""
    for base in range(10000, 32000 - count, 500):
        if all(port_free(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no block of {count} free ports")


def processes(server_pid: int) -> list[psutil.Process]:
    server = psutil.Process(server_pid)
    return [server, *server.children(recursive=True)]


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def engine_description() -> str:
    spec = importlib.util.find_spec("pjsua2")
    if spec is None or spec.origin is None:
        return "pjsua2 missing"
    info = Path(spec.origin).parent / "callbridge_pjsua2_build.json"
    if info.exists():
        data = json.loads(info.read_text())
        return f"source build {data['key']} ({data['max_calls']} calls per worker)"
    return "PyPI wheel pjsua2-python (4 calls per worker)"


async def place(
    client: httpx.AsyncClient, run: Run, args: argparse.Namespace, agents: str, customers: str
) -> float:
    """POST the click-to-calls at `args.rate` per second; returns when all are placed."""
    max_time = math.ceil(args.sessions / args.rate + ANSWER_WAIT_S + args.hold + 10)
    started = time.monotonic()

    async def one(n: int) -> None:
        body: dict[str, Any] = {
            "from": {"contact_uri": f"sip:agent{n}@{agents}", "state_management": True},
            "to": {"contact_uri": f"sip:customer{n}@{customers}"},
            "virtual_number": EXOPHONE,
            "max_time_limit": max_time,
            "status_callback": [
                {"event": "answered", "url": args.hooks},
                {"event": "terminal", "url": args.hooks},
            ],
        }
        recorded, streamed = n < args.recorded, n >= args.sessions - args.streamed
        if recorded:
            body["recording"] = {"record": True, "channels": "dual"}
        if streamed:
            body["streaming"] = {"url": args.bot_url, "begin": "to_leg_connect"}
        posted = time.monotonic()
        r = await client.post("/v3/accounts/bench/calls", json=body)
        if r.status_code != 200:
            run.refused.append(f"{r.status_code} {r.text[:200]}")
            return
        sid = r.json()["response"]["call_details"]["sid"]
        run.sessions[sid] = Session(sid, posted, recorded, streamed)

    tasks = []
    for n in range(args.sessions):
        delay = started + n / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    return time.monotonic() - started


async def leg_statuses(client: httpx.AsyncClient, sid: str) -> tuple[bool, str]:
    """Whether both legs of a call are in progress, and the leg statuses as text."""
    details = (await client.get(f"/v3/accounts/bench/calls/{sid}/legs")).json()["response"]
    legs = details["leg_details"]
    statuses = [leg["status"] for leg in legs["from"] + legs["to"]]
    return statuses == ["in-progress", "in-progress"], f"legs {statuses}"


async def probe(
    client: httpx.AsyncClient, control: httpx.AsyncClient, sids: list[str], until: float
) -> tuple[list[float], list[float]]:
    """GET /calls/{sid} one after another (about 40/s) until `until`, each followed by a GET
    to the control server: both latencies in ms."""
    ours: list[float] = []
    theirs: list[float] = []
    while time.monotonic() < until:
        started = time.perf_counter()
        r = await client.get(f"/v3/accounts/bench/calls/{random.choice(sids)}")
        ours.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.text
        started = time.perf_counter()
        await control.get("/")
        theirs.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    return ours, theirs


async def recording_lengths(client: httpx.AsyncClient, run: Run) -> list[tuple[float, float]]:
    """(talk time, MP3 length) of every recorded session."""
    pairs = []
    for session in run.sessions.values():
        if not (session.recorded and session.terminal and session.terminal["recordings"]):
            continue
        url = session.terminal["recordings"][0]["url"]
        r = await client.get("/" + url.split("://", 1)[1].split("/", 1)[1])
        info = miniaudio.mp3_get_info(r.content)
        pairs.append((float(session.terminal["total_talk_time"]), info.duration))
    return pairs


async def main_run(args: argparse.Namespace, workdir: Path) -> None:
    cores = psutil.cpu_count()
    print(f"host: {cores} cores, load average {os.getloadavg()[0]:.2f} (other users included)")
    print(f"engine: {engine_description()}; workers={args.workers}")
    base = await asyncio.to_thread(
        run_baseline, workdir, 2 * args.sessions, 2 * args.rate, args.base_hold
    )
    print(
        f"baseline SIPp→SIPp: {base.ok}/{base.calls} calls ok, {base.failed} failed at "
        f"{2 * args.rate:g} calls/s, INVITE→200 p50={pct(base.invite_to_200_ms, 0.5):.1f} ms "
        f"p99={pct(base.invite_to_200_ms, 0.99):.1f} ms; SIPp CPU "
        f"{2 * base.cpu_pct_per_call:.3f}% of a core per 2 calls (a session's RTP)"
    )

    bound = int(args.sessions / args.rate + args.hold + 120)
    agents = start_sipp(
        "uas_answer_echo.xml", workdir / "agents", calls=args.sessions, pause_ms=0,
        timeout_s=bound, rtp_echo=True,
    )  # fmt: skip
    customers = start_sipp(
        "uas_answer_echo.xml", workdir / "customers", calls=args.sessions, pause_ms=0,
        timeout_s=bound, rtp_echo=True,
    )  # fmt: skip
    bot, bot_port = start_bot()
    control_server, control_port = start_control()
    hooks = Receiver()
    run = Run()
    hooks.handler = run.on_callback
    await hooks.start()
    args.hooks, args.bot_url = hooks.url(), f"ws://127.0.0.1:{bot_port}/bot"
    # RTP ports for every call with a quarter to spare (2 per call, split between workers),
    # below the ephemeral range so the block is free.
    per_worker = 2 * math.ceil(1.25 * 2 * args.sessions / args.workers)
    rtp = per_worker * args.workers
    rtp_min = free_block(rtp)
    env = {
        "CALLBRIDGE_DRIVER": "sip",
        "CALLBRIDGE_SIP_WORKERS": str(args.workers),
        "CALLBRIDGE_SIP_PORT": str(free_port(args.workers)),
        "CALLBRIDGE_SIP_RTP_PORT_MIN": str(rtp_min),
        "CALLBRIDGE_SIP_RTP_PORT_MAX": str(rtp_min + rtp - 1),
    }
    auth = httpx.BasicAuth(KEY, TOKEN)
    try:
        with callbridge_server(CONFIG, env=env) as (host, port, pid):
            limits = httpx.Limits(max_connections=64)
            async with (
                httpx.AsyncClient(
                    base_url=f"http://{host}:{port}", auth=auth, timeout=30, limits=limits
                ) as client,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{control_port}") as control,
            ):
                procs = processes(pid)
                idle = [p.memory_info().rss / 2**20 for p in procs]
                idle_rss = sum(idle) * 2**20
                print(
                    f"idle: API process {idle[0]:.0f} MiB, workers "
                    f"{'/'.join(f'{x:.0f}' for x in idle[1:])} MiB"
                )
                ramp_s = await place(client, run, args, agents.uri_host, customers.uri_host)
                ok = await run.wait(
                    lambda: all(s.answered_at or s.terminal for s in run.sessions.values()),
                    ANSWER_WAIT_S,
                )
                # A session whose answered callback is late still counts if its legs say so.
                late: list[str] = []
                for session in run.sessions.values():
                    if session.answered_at or session.terminal:
                        continue
                    bridged, legs = await leg_statuses(client, session.sid)
                    if bridged:
                        late.append(session.sid)
                    else:
                        print(f"  not answered: {session.sid} {legs}")
                answered = [s for s in run.sessions.values() if s.answered_at]
                first = min(s.posted_at for s in run.sessions.values())
                last = max((s.answered_at or 0.0) for s in run.sessions.values())
                setup_rate = len(answered) / max(1e-3, last - first)
                latencies = [1000 * (s.answered_at - s.posted_at) for s in answered]  # type: ignore[operator]
                procs = processes(pid)
                up_at_start = {s.sid for s in answered if not s.terminal} | set(late)
                before = [cpu_s([p]) for p in procs]
                hold_started = time.monotonic()
                gets, control_gets = await probe(
                    client, control, list(run.sessions), hold_started + args.hold
                )
                hold_end = time.monotonic()
                held_s = hold_end - hold_started
                after = [cpu_s([p]) for p in procs]
                shares = [100 * (a - b) / held_s for a, b in zip(after, before, strict=True)]
                cpu = sum(shares)
                load = os.getloadavg()[0]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                # Held: up when the hold began and still up when it ended.
                up = [
                    s
                    for s in run.sessions.values()
                    if s.sid in up_at_start and not (s.terminal_at and s.terminal_at < hold_end)
                ]
                streams, media, _ = bot_stats(bot)
                done = await run.wait(lambda: all(s.terminal for s in run.sessions.values()), bound)
                lengths = await recording_lengths(client, run)
                _, media_end, stops = bot_stats(bot)
    finally:
        await hooks.stop()
        stop_bot(bot)
        stop_control(control_server)
        agents.stop()
        customers.stop()

    n = max(1, len(up))
    early = [s for s in run.sessions.values() if s.terminal_at and s.terminal_at < hold_end]
    bad_end = [s for s in run.sessions.values() if (s.terminal or {}).get("status") != "completed"]
    unbridged = len(run.sessions) - len(up_at_start)
    failures = len(run.refused) + unbridged + len(early) + len(bad_end)
    signed = [mp3 - talk for talk, mp3 in lengths]
    off = [abs(x) for x in signed]
    streamed = sum(1 for s in up if s.streamed)
    print(
        f"placed {args.sessions} click-to-calls in {ramp_s:.1f} s; all answered: {ok}; "
        f"answered callback late (> {ANSWER_WAIT_S:g} s) {len(late)}; refused "
        f"{len(run.refused)}; not bridged {unbridged}; ended early {len(early)}; not completed "
        f"{len(bad_end)}"
        f"{'' if done else ' (some never ended)'}"
    )
    print(f"bridged sessions held: {len(up)} over {held_s:.0f} s ({len(answered)} answered)")
    print(
        f"  CPU {cpu:.0f}% of one core (API process {shares[0]:.0f}%, workers "
        f"{'/'.join(f'{x:.0f}' for x in shares[1:])}%; load average {load:.1f}) → "
        f"{cpu / n:.3f}% per session; baseline SIPp {2 * base.cpu_pct_per_call:.3f}% "
        f"→ x{(cpu / n) / max(1e-6, 2 * base.cpu_pct_per_call):.1f}"
    )
    print(
        f"  RSS {rss / 2**20:.0f} MiB ({idle_rss / 2**20:.0f} MiB idle) → "
        f"{(rss - idle_rss) / 2**20 / n:.2f} MiB per session"
    )
    print(
        f"  callbacks: {run.deliveries} deliveries of {len(run.event_sids)} events "
        f"({run.deliveries - len(run.event_sids)} retries)\n"
        f"  click-to-call → answered callback p50={pct(latencies, 0.5):.0f} ms "
        f"p99={pct(latencies, 0.99):.0f} ms; setup rate {setup_rate:.1f} sessions/s "
        f"(asked {args.rate:g}/s); failures {failures}"
    )
    print(
        f"  GET /calls/{{sid}} during the hold: {len(gets)} requests, "
        f"p50={pct(gets, 0.5):.1f} ms p99={pct(gets, 0.99):.1f} ms max={max(gets):.1f} ms; "
        f"a bare control server at the same moments p50={pct(control_gets, 0.5):.1f} ms "
        f"p99={pct(control_gets, 0.99):.1f} ms (the host's own scheduling delay)"
    )
    print(
        f"  recorded: {len(lengths)} MP3s, length - talk time (whole s) from "
        f"{min(signed, default=0):+.2f} to {max(signed, default=0):+.2f} s; "
        f"streamed: {streams} streams, {media_end} media chunks ({media} at hold end), "
        f"{stops} stops"
    )
    recorded_up = sum(1 for s in up if s.recorded)
    sessions_ok = len(up) >= GOAL_SESSIONS and not failures
    recorded_ok = min(recorded_up, len(lengths)) >= GOAL_RECORDED and max(off, default=9) <= 1.5
    streamed_ok = min(streamed, streams) >= GOAL_STREAMED and media > 0
    get_ok = pct(gets, 0.99) <= GOAL_GET_P99_MS
    verdicts = [
        (f">= {GOAL_SESSIONS} bridged sessions, 0 failures", sessions_ok),
        (f">= {GOAL_RECORDED} recorded, MP3 length = talk time +- 1.5 s", recorded_ok),
        (f">= {GOAL_STREAMED} streamed to the bot", streamed_ok),
        (f"GET /calls/{{sid}} p99 <= {GOAL_GET_P99_MS:g} ms during the hold", get_ok),
    ]
    for goal, passed in verdicts:
        print(f"verdict: {'PASS' if passed else 'FAIL'} — {goal}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=GOAL_SESSIONS)
    parser.add_argument("--recorded", type=int, default=GOAL_RECORDED)
    parser.add_argument("--streamed", type=int, default=GOAL_STREAMED)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=40.0, help="click-to-calls per second")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds all sessions are up")
    parser.add_argument("--base-hold", type=float, default=10.0, help="baseline call length")
    args = parser.parse_args()
    if args.recorded + args.streamed > args.sessions:
        parser.error("--recorded + --streamed must not exceed --sessions")
    with tempfile.TemporaryDirectory(prefix="callbridge-bench-sip-") as tmp:
        asyncio.run(asyncio.wait_for(main_run(args, Path(tmp)), 600))


if __name__ == "__main__":
    main()
