"""A minimal keep-alive HTTP/1.1 load generator, so the client costs far less than the server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil


@dataclass
class LoadResult:
    name: str
    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    bodies: list[bytes] = field(default_factory=list)
    server_cpu_s: float | None = None
    """CPU time the server process used during the run (user + system), when measured."""

    @property
    def throughput(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s * 1000 / self.requests

    def line(self) -> str:
        cpu = ""
        if self.server_cpu_s is not None and self.elapsed_s:
            cpu = (
                f"  server CPU {self.server_cpu_ms_per_request:.3f} ms/req "
                f"({self.server_cpu_s / self.elapsed_s:.0%} of a core)"
            )
        return (
            f"{self.name:<28} {self.throughput:9.1f} req/s  p50 {self.pct(50):7.2f} ms  "
            f"p99 {self.pct(99):7.2f} ms  n={self.requests} errors={self.errors} "
            f"statuses={dict(sorted(self.statuses.items()))}{cpu}"
        )


async def _one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


def build_request(
    method: str, path: str, host: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_load(
    name: str,
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    concurrency: int,
    duration_s: float,
    keep_bodies: bool = False,
    max_requests: int = 1_000_000,
    server_pid: int | None = None,
) -> LoadResult:
    """Drive `concurrency` connections for `duration_s`; each sends `make_request(i)`.

    With `server_pid`, the server process's CPU time over the run is measured too."""
    result = LoadResult(name)
    cpu_before = _cpu_s(server_pid)
    deadline = time.perf_counter() + duration_s
    counter = iter(range(max_requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    status, body = await _one(reader, writer, make_request(i))
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                result.latencies_s.append(time.perf_counter() - started)
                result.requests += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if keep_bodies:
                    result.bodies.append(body)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    cpu_after = _cpu_s(server_pid)
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu_s = cpu_after - cpu_before
    return result


def _cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
