"""An in-process SSE client that drives the ASGI app directly (httpx's ASGITransport waits for
the whole body, so it cannot read a stream that never ends), and the app it talks to."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import ASGIApp, Message

from callbridge.api.app import create_app
from callbridge.clock import ManualClock
from callbridge.config import apply_config, parse_config
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.telephony.sim import SimulatedCarrier
from callbridge.telephony.sim_media import SimMediaPlane

from ..harness import DEFAULT_CONFIG, Harness

EVENT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: dict[str, Any]


class SseStream:
    """One GET held open against the app: the status, headers and parsed events."""

    def __init__(self, app: ASGIApp, path: str, headers: dict[str, str], *, stall: bool = False):
        self._app = app
        self._path = path
        self._headers = headers
        self._stall = stall
        self._messages: asyncio.Queue[Message] = asyncio.Queue()
        self._disconnect = asyncio.Event()
        self._release = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._buffer = ""
        self._events: list[Event] = []
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.body = b""
        self.finished = False
        self.comments: list[str] = []

    async def open(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self._path,
            "raw_path": self._path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in self._headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("callbridge", 80),
        }
        sent_request = False

        async def receive() -> Message:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self._disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await self._messages.put(message)
            if self._stall and message["type"] == "http.response.body":
                # A browser that stopped reading: the server's write never completes.
                await self._release.wait()

        async def run() -> None:
            await self._app(scope, receive, send)

        self._task = asyncio.create_task(run())
        start = await self._next_message()
        assert start is not None and start["type"] == "http.response.start", start
        self.status = start["status"]
        self.response_headers = {k.decode(): v.decode() for k, v in start["headers"]}

    async def _next_message(self, timeout_s: float = EVENT_TIMEOUT_S) -> Message | None:
        getter = asyncio.ensure_future(self._messages.get())
        assert self._task is not None
        done, _ = await asyncio.wait(
            {getter, self._task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._task in done:
            self.finished = True
            self._task.result()
            return None
        raise TimeoutError(f"no message from the stream in {timeout_s}s")

    async def _pull(self, timeout_s: float) -> bool:
        """Read one body chunk into the event list; False once the response ended."""
        message = await self._next_message(timeout_s)
        if message is None or message["type"] != "http.response.body":
            return False
        chunk: bytes = message.get("body", b"")
        self.body += chunk
        self._buffer += chunk.decode()
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            self._parse(block)
        if not message.get("more_body", False):
            self.finished = True
            return False
        return True

    def _parse(self, block: str) -> None:
        kind, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if data:
            self._events.append(Event(kind, json.loads("\n".join(data))))

    async def next_event(self, timeout_s: float = EVENT_TIMEOUT_S) -> Event:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._events:
            remaining = deadline - loop.time()
            if self.finished:
                raise EOFError("stream ended")
            if remaining <= 0:
                raise TimeoutError("no event")
            if not await self._pull(remaining) and not self._events:
                raise EOFError("stream ended")
        return self._events.pop(0)

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout_s: float = EVENT_TIMEOUT_S
    ) -> Event:
        """The first event that matches (earlier ones are consumed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            event = await self.next_event(max(0.01, deadline - loop.time()))
            if predicate(event):
                return event

    def release(self) -> None:
        """Let a stalled reader read again."""
        self._release.set()

    async def close(self) -> None:
        self._disconnect.set()
        self._release.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task


@dataclass
class LiveApp:
    harness: Harness
    app: ASGIApp

    @asynccontextmanager
    async def stream(
        self, path: str, headers: dict[str, str], *, stall: bool = False
    ) -> AsyncIterator[SseStream]:
        stream = SseStream(self.app, path, headers, stall=stall)
        await stream.open()
        try:
            yield stream
        finally:
            await stream.close()


@asynccontextmanager
async def live_app(store: Store, clock: ManualClock) -> AsyncIterator[LiveApp]:
    """`tests.harness.running_app`, keeping hold of the ASGI app for streaming."""
    settings = Settings(allow_private_urls=True, log_level="WARNING")
    await apply_config(store, parse_config(DEFAULT_CONFIG), clock)
    driver = SimulatedCarrier(clock, media=SimMediaPlane(clock))
    app = create_app(settings, driver=driver, store=store, clock=clock, run_background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://callbridge") as client:
            yield LiveApp(Harness(app.state.services, client, clock), app)
