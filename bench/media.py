"""Media benchmark: concurrent recorded + streamed sim calls at real-time pace; MP3 encode speed.

Run: .venv/bin/python bench/media.py [--calls 200] [--seconds 20] [--mode engine|plane|both].
`engine` places every call through the real app (POST /v3/accounts/{sid}/calls in process, the
call engine, the simulated carrier and its media plane, SQLite), each recorded dual and streamed
to a bot; `plane` drives recorders and streams on the media plane alone (no engine). The stream
bot runs in a separate process (a websockets server on 127.0.0.1) so the CPU figures are
callbridge's own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from _bot import bot_stats, start_bot, stop_bot
from sqlalchemy import select

from callbridge.api.app import create_app
from callbridge.clock import SystemClock
from callbridge.domain.options import RecordingChannels, RecordingFormat
from callbridge.media.audio import interleave, synth
from callbridge.media.mp3 import Mp3Encoder
from callbridge.media.recorder import CallRecorder
from callbridge.media.stream import StreamSession
from callbridge.settings import Settings
from callbridge.store.tables import recordings as recordings_table
from callbridge.telephony.base import Handle
from callbridge.telephony.sim_media import SimMediaPlane


def encode_speed() -> None:
    seconds = 60
    left = synth("+919900000001", 0, 8000 * seconds)
    right = synth("+919812345678", 0, 8000 * seconds)
    for channels in (1, 2):
        for fmt in (RecordingFormat.MP3, RecordingFormat.MP3_HQ):
            pcm = interleave(left, right) if channels == 2 else left
            encoder = Mp3Encoder(channels, fmt)
            step = 16000 * channels  # 1 s batches, as the recorder feeds them
            size = sum(len(encoder.encode(pcm[i : i + step])) for i in range(0, len(pcm), step))
            size += len(encoder.flush())
            print(
                f"encode {fmt.value:6} {channels}ch: {encoder.speed_x:7.0f}x real time, "
                f"{size * 8 / seconds / 1000:5.1f} kbps"
            )


async def concurrent_calls(n_calls: int, seconds: float, port: int) -> None:
    clock = SystemClock()
    plane = SimMediaPlane(clock)
    recorders: list[CallRecorder] = []
    streams: list[StreamSession] = []
    for i in range(n_calls):
        a, b = f"a{i}", f"b{i}"
        plane.leg_up(a, f"+9199{i:08d}")
        plane.leg_up(b, f"+9188{i:08d}")
        plane.bridge(a, b)

        async def play(pcm: bytes, leg: str = a) -> Handle:
            return await plane.play(leg, pcm, loop=False)

        recorder = CallRecorder(
            RecordingChannels.DUAL,
            RecordingFormat.MP3,
            clock=clock,
            left_leg_sid=a,
            right_leg_sid=b,
        )
        stream = StreamSession(
            url=f"ws://127.0.0.1:{port}/bot",
            call_sid=f"{i:032x}",
            account_sid="bench",
            from_uri=f"+9199{i:08d}",
            to_uri=f"+9188{i:08d}",
            play=play,
            clock=clock,
        )
        stream.start()
        await plane.tap([a, b], recorder)
        await plane.tap([a, b], stream)
        recorders.append(recorder)
        streams.append(stream)
    deadline = time.monotonic() + 10
    while sum(s.stats.connected for s in streams) < n_calls and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    print(f"streams connected: {sum(s.stats.connected for s in streams)}/{n_calls}")
    # Measure loop lag with a probe timer while the calls run.
    lags: list[float] = []
    loop = asyncio.get_running_loop()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    end = loop.time() + seconds
    while loop.time() < end:
        due = loop.time() + 0.05
        await asyncio.sleep(0.05)
        lags.append(loop.time() - due)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    await asyncio.gather(*(s.stop("callended") for s in streams))
    f0 = time.perf_counter()
    results = await asyncio.gather(*(r.finish() for r in recorders))
    finish_s = time.perf_counter() - f0
    plane.close()
    durations = [r.duration_s for r in results]
    sent = sum(s.stats.media_sent for s in streams)
    dropped = sum(s.stats.media_dropped for s in streams)
    print(f"calls: {n_calls} (dual mp3 recording + 8 kHz stream each), {wall:.1f} s measured")
    share = cpu / wall
    print(f"process CPU: {share * 100:.1f}% of one core; per call {share / n_calls * 100:.3f}%")
    print(f"capacity at this cost: ~{int(n_calls / (cpu / wall))} calls per core")
    print(
        f"loop lag: median {statistics.median(lags) * 1000:.1f} ms, "
        f"max {max(lags) * 1000:.1f} ms; ticks skipped {plane.ticks_skipped}"
    )
    print(f"stream chunks sent {sent}, dropped {dropped}; recordings finished in {finish_s:.2f} s")
    print(
        f"recording lengths: min {min(durations):.2f} s, max {max(durations):.2f} s "
        f"(each ran ~{seconds:.0f} s + setup)"
    )


CONFIG = """
[[accounts]]
sid = "bench"
api_key = "k_bench"
api_token = "t_bench"
rate_limit_per_minute = 0
exophones = ["+912241499102"]
"""


async def engine_calls(n_calls: int, seconds: float, port: int, bot: subprocess.Popen[str]) -> None:
    """N calls through the API and the engine on the sim driver: recorded dual and streamed."""
    before = bot_stats(bot)
    with tempfile.TemporaryDirectory(prefix="callbridge-bench-media-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(CONFIG)
        settings = Settings(
            allow_private_urls=True, data_dir=Path(tmp), config=config, log_level="WARNING"
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            svc = app.state.services
            sim = svc.sim
            lateness: list[float] = []
            sim.timer_lateness_s = lateness
            auth = "Basic " + base64.b64encode(b"k_bench:t_bench").decode()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cb") as client:
                from callbridge.telephony.sim import Behaviour

                sids: list[str] = []
                t_place = time.perf_counter()
                for i in range(n_calls):
                    agent, customer = f"+9199{i:08d}", f"+9188{i:08d}"
                    sim.set_behaviour(agent, Behaviour(answer_after_s=0.5))
                    sim.set_behaviour(
                        customer, Behaviour(answer_after_s=0.5, hangup_after_s=seconds)
                    )
                    r = await client.post(
                        "/v3/accounts/bench/calls",
                        headers={"Authorization": auth},
                        json={
                            "from": {"contact_uri": agent},
                            "to": {"contact_uri": customer},
                            "virtual_number": "+912241499102",
                            "recording": {"record": True, "channels": "dual"},
                            "streaming": {
                                "url": f"ws://127.0.0.1:{port}/bot",
                                "begin": "to_leg_connect",
                            },
                        },
                    )
                    assert r.status_code == 200, r.text
                    sids.append(r.json()["response"]["call_details"]["sid"])
                place_s = time.perf_counter() - t_place
                print(f"engine: {n_calls} calls placed via the API in {place_s:.2f} s")
                await asyncio.sleep(1.5)  # both legs answered, bridged, streams connecting
                lateness.clear()
                lags: list[float] = []
                loop = asyncio.get_running_loop()
                cpu0, wall0 = time.process_time(), time.perf_counter()
                end = loop.time() + seconds - 2.5
                while loop.time() < end:
                    due = loop.time() + 0.05
                    await asyncio.sleep(0.05)
                    lags.append(loop.time() - due)
                cpu = time.process_time() - cpu0
                wall = time.perf_counter() - wall0
                active = svc.engine.active_calls
                t_end = time.perf_counter()
                while svc.engine.active_calls and time.perf_counter() - t_end < 60:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                # Calls hang up `seconds` after both legs answered (~1 s after placing).
                drain_s = time.perf_counter() - (t_place + place_s + 1.0 + seconds)
                statuses: dict[str, int] = {}
                for sid in sids:
                    r = await client.get(
                        f"/v3/accounts/bench/calls/{sid}", headers={"Authorization": auth}
                    )
                    status = r.json()["response"]["call_details"]["status"]
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
            async with svc.store.read() as conn:
                durations = list(
                    (await conn.execute(select(recordings_table.c.duration_s))).scalars()
                )
            plane = sim._media
            ticks_skipped = plane.ticks_skipped if plane is not None else -1
    await asyncio.sleep(0.5)
    connections, media, stops = (a - b for a, b in zip(bot_stats(bot), before, strict=True))
    share = cpu / wall
    late = sorted(lateness) or [0.0]
    print(
        f"engine: {active} calls active while measured ({wall:.1f} s, each recorded dual "
        f"+ streamed at 8 kHz to the bot)"
    )
    print(
        f"engine: process CPU {share * 100:.1f}% of one core; per call "
        f"{share / n_calls * 100:.3f}% -> ~{int(n_calls / share)} calls per core"
    )
    print(
        f"engine: loop lag median {statistics.median(lags) * 1000:.1f} ms, "
        f"max {max(lags) * 1000:.1f} ms; sim timer lateness p99 "
        f"{late[int(len(late) * 0.99) - 1] * 1000:.1f} ms; ticks skipped {ticks_skipped}"
    )
    print(f"engine: all terminal {drain_s:+.2f} s from the last scheduled hang-up")
    print(f"engine: statuses {statuses}")
    print(
        f"engine: recordings {len(durations)}, length min {min(durations, default=0):.2f} s "
        f"max {max(durations, default=0):.2f} s (talk time {seconds:.0f} s)"
    )
    print(
        f"engine: bot saw {connections} streams, {media} media chunks "
        f"(~{media / max(1, connections) / seconds:.1f}/s per stream), {stops} stops"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mode", choices=("engine", "plane", "both"), default="both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    encode_speed()
    bot, port = start_bot()
    try:
        if args.mode in ("plane", "both"):
            asyncio.run(concurrent_calls(args.calls, args.seconds, port))
        if args.mode in ("engine", "both"):
            asyncio.run(engine_calls(args.calls, args.seconds, port, bot))
    finally:
        stop_bot(bot)


if __name__ == "__main__":
    main()
