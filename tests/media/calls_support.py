"""API-level media test helpers: the in-process app of tests/harness.py with its media plane kept
in reach, a carrier that logs what it plays, and a ManualClock driver that lets real sockets
(the WAV server, the stream bot) run between 20 ms steps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from callbridge.api.app import create_app
from callbridge.clock import ManualClock
from callbridge.config import apply_config, parse_config
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.telephony.base import Handle
from callbridge.telephony.sim import SimulatedCarrier
from callbridge.telephony.sim_media import SimMediaPlane

from ..harness import ACCOUNT, DEFAULT_CONFIG, Harness
from .support import FrameLog


class LoggingCarrier(SimulatedCarrier):
    """The simulated carrier, noting every `play` (leg, bytes, loop, clock time)."""

    def __init__(self, clock: ManualClock, plane: SimMediaPlane) -> None:
        super().__init__(clock, media=plane)
        self._manual = clock
        self.played: list[tuple[str, int, bool, float]] = []

    async def play(self, leg_sid: str, pcm: bytes, *, loop: bool = False) -> Handle:
        self.played.append((leg_sid, len(pcm), loop, self._manual.monotonic()))
        return await super().play(leg_sid, pcm, loop=loop)


class MediaHarness(Harness):
    def __init__(
        self,
        harness: Harness,
        plane: SimMediaPlane,
        carrier: LoggingCarrier,
        settings: Settings,
    ) -> None:
        super().__init__(harness.services, harness.client, harness.clock)
        self.plane = plane
        self.carrier = carrier
        self.settings = settings

    async def run(self, seconds: float, *, step_s: float = 0.02) -> None:
        """Advance the clock in 20 ms steps, letting real socket I/O happen between steps."""
        for _ in range(round(seconds / step_s)):
            await self.advance(step_s)
            await asyncio.sleep(0.001)

    async def run_until(
        self, predicate: Any, *, limit_s: float = 30.0, step_s: float = 0.02
    ) -> float:
        """Run until `predicate()` holds; returns the clock time then."""
        for _ in range(round(limit_s / step_s)):
            if predicate():
                return self.clock.monotonic()
            await self.advance(step_s)
            await asyncio.sleep(0.001)
        raise AssertionError("condition not reached in clock time")

    async def leg_sids(self, call_sid: str) -> tuple[str, str | None]:
        legs = await self.legs(call_sid)
        to = legs["to"][0]["sid"] if legs["to"] else None
        return legs["from"][0]["sid"], to

    async def tap(self, leg_sids: Sequence[str]) -> FrameLog:
        """Listen to legs on the media plane: each leg's voice plus what is played to it."""
        log = FrameLog()
        await self.plane.tap(list(leg_sids), log)
        return log

    async def terminal(self, call_sid: str, *, limit_s: float = 10.0) -> dict[str, Any]:
        """Run the clock (with I/O) until the call is terminal; returns its details."""
        for _ in range(round(limit_s / 0.05)):
            details = await self.call(call_sid)
            if details["state"] == "terminal":
                return details
            await self.advance(0.05)
            await asyncio.sleep(0.002)
        raise AssertionError("call did not end")

    async def sim_action(self, uri: str, action: str, **body: Any) -> httpx.Response:
        r = await self.client.post(
            f"/sim/v1/numbers/{uri}/actions", json={"action": action, **body}, headers=self.auth
        )
        await self.settle()
        return r

    async def recording(self, details: dict[str, Any]) -> bytes:
        recordings = details["recordings"]
        assert isinstance(recordings, list) and len(recordings) == 1, details
        path = "/" + recordings[0]["url"].split("://", 1)[1].split("/", 1)[1]
        assert path.startswith(f"/v3/accounts/{ACCOUNT}/recordings/")
        r = await self.client.get(path, headers=self.auth)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/mpeg"
        return r.content


@asynccontextmanager
async def media_app(
    store: Store,
    clock: ManualClock,
    *,
    settings: Settings | None = None,
    config: str = DEFAULT_CONFIG,
) -> AsyncIterator[MediaHarness]:
    """The real app (store, engine, media, recordings) on a ManualClock and the sim carrier."""
    settings = settings or Settings(allow_private_urls=True, log_level="WARNING")
    await apply_config(store, parse_config(config), clock)
    plane = SimMediaPlane(clock)
    carrier = LoggingCarrier(clock, plane)
    app = create_app(settings, driver=carrier, store=store, clock=clock, run_background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://callbridge") as client:
            yield MediaHarness(Harness(app.state.services, client, clock), plane, carrier, settings)
