"""Webhook test helpers: a real HTTP/1.1 receiver on 127.0.0.1, DB helpers, a no-jitter RNG."""

from __future__ import annotations

import asyncio
import http
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from callbridge.store.tables import accounts
from callbridge.webhooks.signing import new_secret


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    @property
    def event_sid(self) -> str:
        return self.headers["x-exotel-event-sid"]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_s: float = 0.0


class Receiver:
    """A small HTTP/1.1 server with keep-alive; replies come from `replies` (in order), then from
    `handler`, then 200. `stop()`/`start()` take it down and up on the same port."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.replies: list[Reply] = []
        self.handler: Callable[[Received], Reply] | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.received = asyncio.Condition()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s), self.received:
            await self.received.wait_for(lambda: len(self.requests) >= count)

    def _reply_for(self, request: Received) -> Reply:
        if self.replies:
            return self.replies.pop(0)
        if self.handler is not None:
            return self.handler(request)
        return Reply()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                request = Received(method, target, headers, body)
                reply = self._reply_for(request)
                async with self.received:
                    self.requests.append(request)
                    self.received.notify_all()
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
                reason = (
                    http.HTTPStatus(reply.status).phrase
                    if reply.status in set(http.HTTPStatus)
                    else "Status"
                )
                out_headers = {"Content-Length": str(len(reply.body)), **reply.headers}
                head_out = f"HTTP/1.1 {reply.status} {reason}\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in out_headers.items()
                )
                writer.write(head_out.encode("latin-1") + b"\r\n" + reply.body)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()


def sqlite_engine(path: Path) -> AsyncEngine:
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    return engine


async def add_account(engine: AsyncEngine, sid: str = "acme", secret: str | None = None) -> str:
    """Insert an account row; returns its webhook secret."""
    secret = secret or new_secret()
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            accounts.insert().values(
                sid=sid,
                api_key=f"key-{sid}",
                api_token_hash="x",
                webhook_secret=secret,
                created_at=now,
                updated_at=now,
            )
        )
    return secret


class NoJitter:
    """An RNG whose `uniform` is the midpoint: the schedule without jitter."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2
