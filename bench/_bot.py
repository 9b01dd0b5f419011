"""A stream bot for benchmarks: a websockets server on 127.0.0.1 in its own process (so the CPU
figures stay callbridge's), counting streams, media chunks and stops."""

from __future__ import annotations

import subprocess
import sys

BOT = r"""
import asyncio, sys
from websockets.asyncio.server import serve
stats = {"connections": 0, "media": 0, "stop": 0}
async def handler(ws):
    stats["connections"] += 1
    async for raw in ws:
        if '"event":"media"' in raw:
            stats["media"] += 1
        elif '"event":"stop"' in raw:
            stats["stop"] += 1
async def report():
    loop = asyncio.get_running_loop()
    while True:
        await loop.run_in_executor(None, sys.stdin.readline)
        print(stats["connections"], stats["media"], stats["stop"], flush=True)
async def main():
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=2**20) as server:
        print(next(iter(server.sockets)).getsockname()[1], flush=True)
        await report()
asyncio.run(main())
"""


def start_bot() -> tuple[subprocess.Popen[str], int]:
    """The bot process and its port; stop it with `stop_bot`."""
    bot = subprocess.Popen(
        [sys.executable, "-c", BOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert bot.stdout is not None
    return bot, int(bot.stdout.readline())


def bot_stats(bot: subprocess.Popen[str]) -> tuple[int, int, int]:
    """(streams, media chunks, stops) the bot has seen so far."""
    assert bot.stdin is not None and bot.stdout is not None
    bot.stdin.write("\n")
    bot.stdin.flush()
    connections, media, stops = (int(x) for x in bot.stdout.readline().split())
    return connections, media, stops


def stop_bot(bot: subprocess.Popen[str]) -> None:
    bot.terminate()
    bot.wait(5)
