"""`Idempotency-Key` on POST /calls: replay the first answer, refuse a different body or a retry
that races the first request."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from callbridge.errors import IdempotencyInFlight, IdempotencyMismatch, ValidationFailed
from callbridge.store.repo import Store, utc_required
from callbridge.store.tables import idempotency_keys

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: str


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class IdempotencyStore:
    def __init__(self, store: Store, ttl_s: int) -> None:
        self._store = store
        self._ttl = timedelta(seconds=ttl_s)

    async def begin(
        self, account_sid: str, key: str, request_hash: str, now: datetime
    ) -> StoredResponse | None:
        """Claim the key (None: go ahead) or return the stored response to replay."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ValidationFailed(f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} characters")
        for _ in range(2):
            try:
                async with self._store.tx() as conn:
                    await conn.execute(
                        insert(idempotency_keys).values(
                            account_sid=account_sid,
                            key=key,
                            request_hash=request_hash,
                            state="in_flight",
                            created_at=now,
                            expires_at=now + self._ttl,
                        )
                    )
                return None
            except IntegrityError:
                pass
            async with self._store.tx() as conn:
                row = (
                    await conn.execute(
                        select(idempotency_keys).where(
                            idempotency_keys.c.account_sid == account_sid,
                            idempotency_keys.c.key == key,
                        )
                    )
                ).first()
                if row is None:
                    continue
                m = row._mapping
                if utc_required(m["expires_at"]) <= now:
                    await conn.execute(
                        delete(idempotency_keys).where(
                            idempotency_keys.c.account_sid == account_sid,
                            idempotency_keys.c.key == key,
                        )
                    )
                    continue
            if m["request_hash"] != request_hash:
                raise IdempotencyMismatch()
            if m["state"] != "done":
                raise IdempotencyInFlight()
            return StoredResponse(int(m["response_status"]), str(m["response_body"]))
        raise IdempotencyInFlight()

    async def finish(self, account_sid: str, key: str, status: int, body: str) -> None:
        async with self._store.tx() as conn:
            if status >= 500:
                # A server error is not an answer: let the client retry with the same key.
                await conn.execute(
                    delete(idempotency_keys).where(
                        idempotency_keys.c.account_sid == account_sid,
                        idempotency_keys.c.key == key,
                    )
                )
                return
            await conn.execute(
                update(idempotency_keys)
                .where(idempotency_keys.c.account_sid == account_sid, idempotency_keys.c.key == key)
                .values(state="done", response_status=status, response_body=body)
            )
