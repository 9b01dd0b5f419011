"""Recording URLs in callbacks become signed links as each attempt is sent: by the server's
worker with its own key, and by a standalone worker only when it shares the signing key."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.clock import ManualClock
from callbridge.domain.options import CallbackEvent, StatusCallback
from callbridge.media.links import RecordingLinks
from callbridge.media.storage import verify_link
from callbridge.settings import Settings
from callbridge.store.outbox import enqueue_events
from callbridge.store.tables import outbox
from callbridge.webhooks.ssrf import UrlGuard
from callbridge.webhooks.worker import DeliveryWorker

from .helpers import Receiver, add_account

BASE = "https://cb.example.com"
REC = "a" * 32
URL = f"{BASE}/v3/accounts/acme/recordings/{REC}.mp3"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=datetime.now(UTC))


async def _enqueue(engine: AsyncEngine, clock: ManualClock, url: str) -> None:
    details = {
        "recordings": [{"url": URL}],
        "custom_field": URL + "?not=signed",  # only exact recording URLs are touched
        "other": f"{BASE}/v3/accounts/other/recordings/{REC}.mp3",  # not this account's
    }
    async with engine.begin() as conn:
        await enqueue_events(
            conn,
            account_sid="acme",
            call_sid="call1",
            event_type=CallbackEvent.TERMINAL,
            callbacks=[StatusCallback(event=CallbackEvent.TERMINAL, url=url)],
            call_details=details,
            now=clock.now(),
        )


def _settings(**extra: object) -> Settings:
    return Settings(public_base_url=BASE, allow_private_urls=True, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [None, "shared-key"])
async def test_a_worker_signs_recording_urls_only_with_the_shared_key(
    engine: AsyncEngine, clock: ManualClock, receiver: Receiver, key: str | None
) -> None:
    await add_account(engine)
    await _enqueue(engine, clock, receiver.url("/cb"))
    settings = _settings(signing_key=SecretStr(key) if key else None)
    worker = DeliveryWorker.from_settings(settings, engine, clock, "w1", guard=UrlGuard(True))
    try:
        assert await worker.drain() == 1
    finally:
        await worker.aclose()
    sent = json.loads(receiver.requests[0].body)["call_details"]
    assert sent["custom_field"] == URL + "?not=signed"
    assert sent["other"].endswith(f"/other/recordings/{REC}.mp3")
    link = sent["recordings"][0]["url"]
    if key is None:
        assert link == URL  # a key of its own would mint links no server accepts
    else:
        assert link.split("?")[0] == URL
        query = parse_qs(urlsplit(link).query)
        expires, signature = int(query["expires"][0]), query["signature"][0]
        now = datetime.now(UTC).timestamp()
        assert verify_link(REC, expires, signature, key.encode(), now=now)
    async with engine.begin() as conn:
        [stored] = (await conn.execute(select(outbox.c.payload))).scalars()
    assert stored["call_details"]["recordings"] == [{"url": URL}]


def test_links_sign_only_this_bases_recording_urls() -> None:
    links = RecordingLinks(BASE, b"k", 60, wall_clock=lambda: 1000.0)
    assert links.sign(URL, "acme") == (
        URL + "?expires=1060&signature=" + links.query(REC)["signature"]
    )
    assert links.sign(URL.replace(BASE, "https://elsewhere"), "acme").startswith("https://else")
    assert "?" not in links.sign(URL.replace(BASE, "https://elsewhere"), "acme")
    assert links.sign(URL + "x", "acme") == URL + "x"
    assert links.sign_all({"a": [URL, 3, None]}, "acme")["a"][1:] == [3, None]
