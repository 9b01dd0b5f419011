"""Recordings as a product: saving finished recordings, finding them per account, signed links,
and retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete, insert, select

from callbridge.clock import Clock
from callbridge.domain.calls import Call
from callbridge.ids import new_sid
from callbridge.media.recorder import RecordingResult
from callbridge.media.storage import (
    LocalRecordingStorage,
    RecordingStorage,
    S3RecordingStorage,
    verify_link,
)
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.store.tables import recordings
from callbridge.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RETENTION_SWEEP_S = 3600.0
PURGE_BATCH = 500


def build_storage(settings: Settings, client: httpx.AsyncClient) -> RecordingStorage:
    """Local files under the data directory, or an S3-compatible bucket when configured."""
    if settings.recordings_s3_endpoint and settings.recordings_s3_bucket:
        secret = settings.recordings_s3_secret_key
        return S3RecordingStorage(
            endpoint=settings.recordings_s3_endpoint,
            bucket=settings.recordings_s3_bucket,
            region=settings.recordings_s3_region,
            access_key=settings.recordings_s3_access_key or "",
            secret_key=secret.get_secret_value() if secret else "",
            client=client,
        )
    return LocalRecordingStorage(settings.data_dir)


class RecordingService:
    def __init__(
        self,
        *,
        store: Store,
        storage: RecordingStorage,
        clock: Clock,
        signing_key: bytes,
        retention_days: int,
    ) -> None:
        self.store = store
        self.storage = storage
        self.clock = clock
        self._key = signing_key
        self.retention_days = retention_days
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def key_from(settings: Settings) -> bytes:
        if settings.signing_key is not None:
            return settings.signing_key.get_secret_value().encode()
        return os.urandom(32)

    async def save(self, call: Call, results: list[Any]) -> list[str]:
        """Store each finished recording and its row; returns the recording ids in order."""
        ids: list[str] = []
        now = self.clock.now()
        for result in results:
            if not isinstance(result, RecordingResult) or not result.mp3_bytes:
                continue
            recording_id = new_sid()
            await self.storage.save(call.account_sid, recording_id, result.mp3_bytes)
            try:
                async with self.store.tx() as conn:
                    await conn.execute(
                        insert(recordings).values(
                            id=recording_id,
                            account_sid=call.account_sid,
                            call_sid=call.sid,
                            storage_key=f"{call.account_sid}/{recording_id}.mp3",
                            format=result.format.value,
                            channels="dual" if result.channels == 2 else "single",
                            duration_s=result.duration_s,
                            size_bytes=len(result.mp3_bytes),
                            created_at=now,
                        )
                    )
            except BaseException:
                # No row, no way to find or expire the file: do not leave it behind.
                with contextlib.suppress(Exception):
                    await self.storage.delete(call.account_sid, recording_id)
                raise
            ids.append(recording_id)
        return ids

    async def read(self, account_sid: str, recording_id: str) -> bytes | None:
        """The MP3 of a recording whose size (and so its account) the caller checked."""
        return await self.storage.read(account_sid, recording_id)

    async def size_of(self, account_sid: str, recording_id: str) -> int | None:
        """The size in bytes of an account's recording, or None (another account's too)."""
        async with self.store.read() as conn:
            row = (
                await conn.execute(
                    select(recordings.c.account_sid, recordings.c.size_bytes).where(
                        recordings.c.id == recording_id
                    )
                )
            ).first()
        if row is None or row[0] != account_sid:
            return None
        return int(row[1])

    async def read_range(
        self, account_sid: str, recording_id: str, start: int, end: int
    ) -> bytes | None:
        """Bytes `start`..`end` (inclusive) of a recording whose size the caller checked."""
        return await self.storage.read_range(account_sid, recording_id, start, end)

    def link_is_valid(self, recording_id: str, expires: str, signature: str) -> bool:
        try:
            expires_at = int(expires)
        except ValueError:
            return False
        return verify_link(recording_id, expires_at, signature, self._key, now=time.time())

    async def purge(self) -> int:
        """Delete recordings older than the retention period (0 days keeps everything).

        Driven by the recordings' rows, whose `created_at` comes from the same clock as the
        cutoff: each old recording's object is deleted, then its row, in batches. Returns how
        many recordings were deleted."""
        if self.retention_days <= 0:
            return 0
        cutoff: datetime = self.clock.now() - timedelta(days=self.retention_days)
        removed = 0
        while True:
            async with self.store.read() as conn:
                rows = (
                    await conn.execute(
                        select(recordings.c.id, recordings.c.account_sid)
                        .where(recordings.c.created_at < cutoff)
                        .limit(PURGE_BATCH)
                    )
                ).all()
            if not rows:
                return removed
            for recording_id, account_sid in rows:
                # A failed delete stops the sweep with the row kept, so it is retried later.
                await self.storage.delete(account_sid, recording_id)
            async with self.store.tx() as conn:
                await conn.execute(
                    delete(recordings).where(recordings.c.id.in_([row[0] for row in rows]))
                )
            removed += len(rows)

    def start(self) -> None:
        if self.retention_days > 0 and self._task is None:
            self._task = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _sweep(self) -> None:
        while True:
            try:
                removed = await self.purge()
                if removed:
                    log.info("recordings purged", extra={"count": removed})
            except Exception:
                log.exception("recording retention sweep failed")
            await self.clock.sleep(RETENTION_SWEEP_S)
