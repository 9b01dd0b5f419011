"""Recording retention: `CALLBRIDGE_RECORDINGS_RETENTION_DAYS` deletes recordings (file and row)
older than that many days, by the clock that stamped them; 0 keeps them forever."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from callbridge.clock import ManualClock
from callbridge.media.service import RecordingService
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.store.tables import recordings

from ..harness import AGENT, CUSTOMER
from .calls_support import MediaHarness, media_app

DAY_S = 86400.0


async def recorded_call(h: MediaHarness) -> str:
    """Places a recorded call, runs it to its end; returns the recording's API path."""
    h.phone(AGENT, "answer", answer_after_s=1)
    h.phone(CUSTOMER, "answer", answer_after_s=1, hangup_after_s=2)
    r = await h.create_call(recording={"record": True})
    details = await h.terminal(r.json()["response"]["call_details"]["sid"])
    assert details["status"] == "completed"
    await h.recording(details)  # served now
    url: str = details["recordings"][0]["url"]
    return "/" + url.split("://", 1)[1].split("/", 1)[1].split("?")[0]  # the credentialled URL


def file_for(settings: Settings, path: str) -> Path:
    recording_id = path.rsplit("/", 1)[1].removesuffix(".mp3")
    return settings.data_dir / "recordings" / "acme" / f"{recording_id}.mp3"


async def row_ids(store: Store) -> set[str]:
    async with store.read() as conn:
        return set((await conn.execute(select(recordings.c.id))).scalars())


async def test_retention_days_from_the_environment_delete_old_recordings(
    store: Store, clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLBRIDGE_RECORDINGS_RETENTION_DAYS", "30")
    settings = Settings(allow_private_urls=True, log_level="WARNING", data_dir=tmp_path)
    assert settings.recordings_retention_days == 30
    async with media_app(store, clock, settings=settings) as h:
        service = h.services.extras["recordings"]
        assert isinstance(service, RecordingService) and service.retention_days == 30
        old = await recorded_call(h)
        await h.advance(20 * DAY_S)
        recent = await recorded_call(h)
        assert file_for(settings, old).is_file() and file_for(settings, recent).is_file()
        await h.advance(11 * DAY_S)  # old is 31 days old, recent 11

        recent_id = recent.rsplit("/", 1)[1].removesuffix(".mp3")
        service.start()  # the hourly sweep; its first pass runs at once
        async with asyncio.timeout(5):
            while await row_ids(store) != {recent_id}:  # noqa: ASYNC110 (a DB row, no event)
                await asyncio.sleep(0.01)
        await service.stop()
        assert not file_for(settings, old).exists()
        assert (await h.client.get(old, headers=h.auth)).status_code == 404
        assert (await h.client.get(recent, headers=h.auth)).status_code == 200
        assert file_for(settings, recent).is_file()

        assert await service.purge() == 0  # nothing else is due
        await h.advance(20 * DAY_S)
        assert await service.purge() == 1
        assert not file_for(settings, recent).exists()
        assert await row_ids(store) == set()
        assert (await h.client.get(recent, headers=h.auth)).status_code == 404


async def test_zero_retention_keeps_recordings_forever(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    settings = Settings(allow_private_urls=True, log_level="WARNING", data_dir=tmp_path)
    assert settings.recordings_retention_days == 0
    async with media_app(store, clock, settings=settings) as h:
        path = await recorded_call(h)
        await h.advance(3650 * DAY_S)
        service = h.services.extras["recordings"]
        assert await service.purge() == 0
        assert (await h.client.get(path, headers=h.auth)).status_code == 200
