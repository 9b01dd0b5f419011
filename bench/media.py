"""Media benchmark: concurrent recorded + streamed sim calls at real-time pace; MP3 encode speed.

Run: .venv/bin/python bench/media.py [--calls 200] [--seconds 20]. The stream bot runs in a
separate process (a websockets server on 127.0.0.1) so the CPU figures are callbridge's own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

from callbridge.clock import SystemClock
from callbridge.domain.options import RecordingChannels, RecordingFormat
from callbridge.media.audio import interleave, synth
from callbridge.media.mp3 import Mp3Encoder
from callbridge.media.recorder import CallRecorder
from callbridge.media.stream import StreamSession
from callbridge.telephony.base import Handle
from callbridge.telephony.sim_media import SimMediaPlane

BOT = r"""
import asyncio, sys
from websockets.asyncio.server import serve
async def handler(ws):
    async for _ in ws:
        pass
async def main():
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=2**20) as server:
        print(next(iter(server.sockets)).getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"""


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    encode_speed()
    bot = subprocess.Popen([sys.executable, "-c", BOT], stdout=subprocess.PIPE, text=True)
    try:
        assert bot.stdout is not None
        port = int(bot.stdout.readline())
        asyncio.run(concurrent_calls(args.calls, args.seconds, port))
    finally:
        bot.terminate()
        bot.wait(5)


if __name__ == "__main__":
    main()
