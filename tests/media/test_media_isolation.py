"""Media stays off the call engine's hot path: a stream bot that stops reading (its socket
backs up) neither delays another call's events nor the terminal state of its own call."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from types import TracebackType

from websockets.asyncio.server import Server, ServerConnection, serve

from callbridge.clock import ManualClock
from callbridge.settings import Settings
from callbridge.store.repo import Store

from ..harness import AGENT, AGENT_2, CUSTOMER
from .calls_support import media_app
from .support import wait_for

CUSTOMER_2 = "+919800000002"


class StalledBot:
    """A WebSocket bot that completes the handshake, then stops reading until released.

    Its receive buffer is tiny and its frame queue short, so the sender's socket backs up."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.media_received = 0
        self.connected = 0
        self._server: Server | None = None
        self.port = 0

    async def __aenter__(self) -> StalledBot:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = await serve(self._handler, sock=sock, max_queue=2, compression=None)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self.release.set()
        self._server.close()
        await self._server.wait_closed()

    async def _handler(self, connection: ServerConnection) -> None:
        self.connected += 1
        await self.release.wait()
        async for raw in connection:
            if json.loads(raw).get("event") == "media":
                self.media_received += 1


async def test_a_stalled_bot_does_not_delay_another_call_or_its_own_end(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    settings = Settings(allow_private_urls=True, log_level="WARNING", data_dir=tmp_path)
    async with StalledBot() as bot, media_app(store, clock, settings=settings) as h:
        h.phone(AGENT, "answer", answer_after_s=1)
        h.phone(CUSTOMER, "manual")
        r = await h.create_call(
            streaming={"url": f"ws://127.0.0.1:{bot.port}/s?sample-rate=24000"},
            recording={"record": True, "channels": "dual"},
        )
        stalled_sid = r.json()["response"]["call_details"]["sid"]
        await h.run(1.0)
        await wait_for(lambda: bot.connected == 1)
        await h.sim_action(CUSTOMER, "answer")
        # 80 s of 24 kHz audio (~5 MB as base64) into a bot that reads none: more than the
        # loopback socket buffers hold, so the stream's sender really backs up.
        await h.run(80.0)

        # Another call on the same engine runs to the second.
        h.phone(AGENT_2, "answer", answer_after_s=1)
        h.phone(CUSTOMER_2, "answer", answer_after_s=2, hangup_after_s=3)
        r = await h.create_call(from_uri=AGENT_2, to_uri=CUSTOMER_2)
        other_sid = r.json()["response"]["call_details"]["sid"]
        started_at = clock.monotonic()
        slowest_step_s = 0.0
        statuses: list[tuple[float, str | None]] = []
        while clock.monotonic() - started_at < 7.0:
            before = time.monotonic()
            await h.advance(0.02)
            slowest_step_s = max(slowest_step_s, time.monotonic() - before)
            details = await h.call(other_sid)
            if not statuses or statuses[-1][1] != details["status"]:
                statuses.append((round(clock.monotonic() - started_at, 2), details["status"]))
            await asyncio.sleep(0.001)
        # Terminal in the 20 ms step that reaches t+6 s (the customer hangs up on schedule).
        assert [status for _, status in statuses] == [None, "completed"]
        assert abs(statuses[1][0] - 6.0) <= 0.021
        assert slowest_step_s < 0.5

        # The stalled call itself ends at once when the agent hangs up.
        before = time.monotonic()
        await h.sim_action(AGENT, "hangup")
        hangup_s = time.monotonic() - before
        details = await h.call(stalled_sid)
        assert details["state"] == "terminal" and details["status"] == "completed"
        assert details["total_talk_time"] == 87
        streamed_chunks = round((clock.monotonic() - 1.0) * 10)  # from the agent's answer
        assert hangup_s < 1.0
        recordings = details["recordings"]
        assert isinstance(recordings, list) and len(recordings) == 1

        bot.release.set()
        await asyncio.sleep(0.2)
        # The bot only ever got part of the audio: the rest was dropped, never queued up.
        assert 0 < bot.media_received < 0.8 * streamed_chunks
