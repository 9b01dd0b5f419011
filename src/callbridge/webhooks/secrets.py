"""Read and rotate an account's webhook signing secret in the `accounts` table.

Rotation keeps the old secret as `webhook_secret_previous`, so requests are signed with both
until the operator finishes the rotation with `drop_previous_secret`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callbridge.store.tables import accounts
from callbridge.webhooks.signing import new_secret

SecretLookup = Callable[[str], Awaitable[list[str]]]


async def get_secrets(conn: AsyncConnection, account_sid: str) -> list[str]:
    """The secrets to sign with: [current] or [current, previous]; [] for an unknown account."""
    result = await conn.execute(
        select(accounts.c.webhook_secret, accounts.c.webhook_secret_previous).where(
            accounts.c.sid == account_sid
        )
    )
    row = result.first()
    if row is None:
        return []
    return [s for s in (row[0], row[1]) if s]


async def rotate_secret(conn: AsyncConnection, account_sid: str, now: datetime) -> str | None:
    """Make a new current secret and keep the current one as previous; returns the new secret
    (to show once to the operator), or None when the account does not exist."""
    current = await get_secrets(conn, account_sid)
    if not current:
        return None
    secret = new_secret()
    await conn.execute(
        update(accounts)
        .where(accounts.c.sid == account_sid)
        .values(
            webhook_secret=secret,
            webhook_secret_previous=current[0],
            updated_at=now.astimezone(UTC),
        )
    )
    return secret


async def drop_previous_secret(conn: AsyncConnection, account_sid: str, now: datetime) -> bool:
    """End a rotation: stop signing with the previous secret. True if the account exists."""
    result = await conn.execute(
        update(accounts)
        .where(accounts.c.sid == account_sid)
        .values(webhook_secret_previous=None, updated_at=now.astimezone(UTC))
    )
    return bool(result.rowcount)


def make_secret_lookup(engine: AsyncEngine) -> SecretLookup:
    """A `secret_lookup` for the DeliveryWorker that reads the accounts table."""

    async def lookup(account_sid: str) -> list[str]:
        async with engine.connect() as conn:
            return await get_secrets(conn, account_sid)

    return lookup
