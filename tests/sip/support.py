"""Helpers for driving callbridge's API over the SIP driver with SIPp as both parties: the
account config, an in-process app on the real clock, polling for a call's end, WAVs for wait
audio and playback, and reading recordings back per channel."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import select

from callbridge.api.app import create_app
from callbridge.api.services import Services
from callbridge.clock import SystemClock
from callbridge.config import apply_config, parse_config
from callbridge.media.audio import dominant_frequency
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.store.tables import busy_marks
from tests.conftest import basic
from tests.media.support import decode_mp3, tone

ACCOUNT = "acme"
KEY = "k_sip_1"
TOKEN = "t_sip_1"
AUTH = basic(KEY, TOKEN)
EXOPHONE = "+912241499102"
AGENT_HZ = 600.0
CUSTOMER_HZ = 1000.0
AUDIO_HZ = 400.0
"""Wait audio and playback WAVs: a third tone, so every party's audio is told apart."""

CONFIG = f"""
[[accounts]]
sid = "{ACCOUNT}"
api_key = "{KEY}"
api_token = "{TOKEN}"
timezone = "Asia/Kolkata"
allow_voip = true
rate_limit_per_minute = 0
exophones = ["{EXOPHONE}"]
"""


def wav_bytes(hz: float, seconds: float) -> bytes:
    """A WAV (8 kHz, 16-bit mono) of a tone, as a customer would host for wait audio."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(tone(hz, seconds))
    return out.getvalue()


def near(hz: float, expected: float, tolerance_hz: float = 20.0) -> bool:
    return abs(hz - expected) <= tolerance_hz


class SipApp:
    """The in-process app on the SIP driver, driven over HTTP (ASGI) like a CRM would."""

    def __init__(self, services: Services, client: httpx.AsyncClient, store: Store) -> None:
        self.services = services
        self.client = client
        self.store = store

    @property
    def driver(self) -> Any:
        return self.services.driver

    async def create_call(self, from_uri: str, to_uri: str, **fields: Any) -> str:
        body: dict[str, Any] = {
            "from": {"contact_uri": from_uri, "state_management": True},
            "to": {"contact_uri": to_uri},
            "virtual_number": EXOPHONE,
            **fields,
        }
        r = await self.client.post(f"/v3/accounts/{ACCOUNT}/calls", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        details = r.json()["response"]["call_details"]
        assert (details["state"], details["status"]) == ("active", None)
        sid: str = details["sid"]
        return sid

    async def call(self, sid: str) -> dict[str, Any]:
        r = await self.client.get(f"/v3/accounts/{ACCOUNT}/calls/{sid}", headers=AUTH)
        assert r.status_code == 200, r.text
        details: dict[str, Any] = r.json()["response"]["call_details"]
        return details

    async def legs(self, sid: str) -> dict[str, Any]:
        r = await self.client.get(f"/v3/accounts/{ACCOUNT}/calls/{sid}/legs", headers=AUTH)
        assert r.status_code == 200, r.text
        details: dict[str, Any] = r.json()["response"]["leg_details"]
        return details

    async def leg_statuses(self, sid: str) -> tuple[list[str], list[str]]:
        legs = await self.legs(sid)
        return [x["status"] for x in legs["from"]], [x["status"] for x in legs["to"]]

    async def wait_terminal(self, sid: str, timeout_s: float = 15.0) -> dict[str, Any]:
        return await wait_terminal(self.client, f"/v3/accounts/{ACCOUNT}/calls/{sid}", timeout_s)

    async def wait_leg(self, sid: str, side: str, status: str, timeout_s: float = 10.0) -> str:
        """Poll the legs API until the first leg of `side` has `status`; returns its sid."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            legs = (await self.legs(sid))[side]
            if legs and legs[0]["status"] == status:
                leg_sid: str = legs[0]["sid"]
                return leg_sid
            await asyncio.sleep(0.02)
        raise AssertionError(f"{side} leg of {sid} never became {status}: {await self.legs(sid)}")

    async def busy_uris(self) -> list[str]:
        async with self.store.read() as conn:
            rows = (await conn.execute(select(busy_marks.c.contact_uri))).all()
        return [row[0] for row in rows]

    async def recording(self, details: dict[str, Any]) -> bytes:
        [entry] = details["recordings"]
        path = "/" + entry["url"].split("://", 1)[1].split("/", 1)[1]
        r = await self.client.get(path, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/mpeg"
        return r.content


async def wait_terminal(
    client: httpx.AsyncClient, url: str, timeout_s: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = await client.get(url, headers=AUTH)
        details: dict[str, Any] = r.json()["response"]["call_details"]
        if details["state"] == "terminal":
            return details
        await asyncio.sleep(0.05)
    raise AssertionError(f"call did not end in {timeout_s}s: {details}")


def channel_tones(
    mp3: bytes, skip_s: float = 0.3, span_s: float = 1.0
) -> tuple[int, float, list[float]]:
    """(channels, duration, dominant frequency of each channel over [skip, skip + span])."""
    channels, _, duration_s, pcm = decode_mp3(mp3)
    start, end = int(skip_s * 8000) * 2, int((skip_s + span_s) * 8000) * 2
    return channels, duration_s, [dominant_frequency(c[start:end]) for c in pcm]


@asynccontextmanager
async def sip_app(
    store: Store, settings: Settings, *, worker_python: str | None = None
) -> AsyncIterator[SipApp]:
    """The real app with `SipDriver(settings)` and the system clock (SIP runs in real time)."""
    from callbridge.telephony.sip import SipDriver

    clock = SystemClock()
    await apply_config(store, parse_config(CONFIG), clock)
    driver = SipDriver(settings, worker_python=worker_python)
    app = create_app(settings, driver=driver, store=store, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://callbridge") as client:
            yield SipApp(app.state.services, client, store)
