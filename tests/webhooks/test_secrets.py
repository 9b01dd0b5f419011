"""Reading and rotating an account's webhook secret in the accounts table."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.webhooks.secrets import (
    drop_previous_secret,
    get_secrets,
    make_secret_lookup,
    rotate_secret,
)

from .helpers import add_account

NOW = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)


async def test_current_secret_only_before_any_rotation(engine: AsyncEngine) -> None:
    secret = await add_account(engine)
    async with engine.connect() as conn:
        assert await get_secrets(conn, "acme") == [secret]
        assert await get_secrets(conn, "nobody") == []


async def test_rotation_keeps_the_old_secret_as_previous(engine: AsyncEngine) -> None:
    old = await add_account(engine)
    async with engine.begin() as conn:
        new = await rotate_secret(conn, "acme", NOW)
    assert new is not None and new.startswith("whsec_") and new != old
    lookup = make_secret_lookup(engine)
    assert await lookup("acme") == [new, old]
    async with engine.begin() as conn:
        assert await drop_previous_secret(conn, "acme", NOW)
    assert await lookup("acme") == [new]


async def test_rotating_an_unknown_account_does_nothing(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await rotate_secret(conn, "nobody", NOW) is None
        assert not await drop_previous_secret(conn, "nobody", NOW)
