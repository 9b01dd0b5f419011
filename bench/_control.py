"""A control HTTP server for latency figures: a bare asyncio responder in its own process.
Probed at the same moments as callbridge, it shows how much of a latency tail is the host
(CPU contention from other processes) rather than the server under test."""

from __future__ import annotations

import subprocess
import sys

SERVER = r"""
import asyncio
BODY = b'{"ok":true}'
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
REPLY = HEAD % len(BODY) + BODY
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(REPLY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def start_control() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def stop_control(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(5)
