"""Accounts and ExoPhones: lookups for auth and routing, idempotent upserts from the config file."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.ids import new_sid
from callbridge.store.tables import accounts, devices, exophones

_PBKDF2_ITERATIONS = 120_000


@dataclass(frozen=True, slots=True)
class Account:
    sid: str
    api_key: str
    api_token_hash: str
    timezone: str
    region: str
    allow_voip: bool
    rate_limit_per_minute: int


@dataclass(frozen=True, slots=True)
class ExoPhone:
    id: str
    account_sid: str
    number: str
    flow_id: str | None


def hash_token(token: str, *, salt: bytes | None = None) -> str:
    """PBKDF2-SHA256 of an API token, as `pbkdf2$<iterations>$<salt hex>$<hash hex>`."""
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), salt, _PBKDF2_ITERATIONS)
    return f"pbkdf2${_PBKDF2_ITERATIONS}${salt.hex()}${digest.hex()}"


def unmatchable_token_hash() -> str:
    """A stored-hash string with the real parameters that no token matches (its digest is
    not a PBKDF2 output anyone can aim at): verifying against it costs a real verification."""
    return f"pbkdf2${_PBKDF2_ITERATIONS}${os.urandom(16).hex()}${'0' * 64}"


def verify_token(token: str, stored: str) -> bool:
    """Constant-time comparison of a presented token against its stored hash."""
    try:
        scheme, iterations, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2":
        return False
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), bytes.fromhex(salt_hex), int(iterations))
    return hmac.compare_digest(digest.hex(), digest_hex)


def _account(row: object) -> Account:
    m = row._mapping  # type: ignore[attr-defined]
    return Account(
        sid=m["sid"],
        api_key=m["api_key"],
        api_token_hash=m["api_token_hash"],
        timezone=m["timezone"],
        region=m["region"],
        allow_voip=bool(m["allow_voip"]),
        rate_limit_per_minute=int(m["rate_limit_per_minute"]),
    )


async def get_account(conn: AsyncConnection, sid: str) -> Account | None:
    row = (await conn.execute(select(accounts).where(accounts.c.sid == sid))).first()
    return _account(row) if row else None


async def get_account_by_key(conn: AsyncConnection, api_key: str) -> Account | None:
    row = (await conn.execute(select(accounts).where(accounts.c.api_key == api_key))).first()
    return _account(row) if row else None


async def upsert_account(
    conn: AsyncConnection,
    *,
    sid: str,
    api_key: str,
    api_token: str,
    timezone: str,
    region: str,
    allow_voip: bool,
    rate_limit_per_minute: int,
    webhook_secret: str,
    now: datetime,
) -> None:
    """Create or update an account; the token is rehashed only when it changed."""
    existing = await get_account(conn, sid)
    values = {
        "api_key": api_key,
        "timezone": timezone,
        "region": region,
        "allow_voip": allow_voip,
        "rate_limit_per_minute": rate_limit_per_minute,
        "updated_at": now,
    }
    if existing is None:
        await conn.execute(
            insert(accounts).values(
                sid=sid,
                api_token_hash=hash_token(api_token),
                webhook_secret=webhook_secret,
                created_at=now,
                **values,
            )
        )
        return
    if not verify_token(api_token, existing.api_token_hash):
        values["api_token_hash"] = hash_token(api_token)
    await conn.execute(update(accounts).where(accounts.c.sid == sid).values(**values))


def _exophone(row: object) -> ExoPhone:
    m = row._mapping  # type: ignore[attr-defined]
    return ExoPhone(m["id"], m["account_sid"], m["number"], m["flow_id"])


async def find_exophone(conn: AsyncConnection, account_sid: str, number: str) -> ExoPhone | None:
    row = (
        await conn.execute(
            select(exophones).where(
                exophones.c.account_sid == account_sid, exophones.c.number == number
            )
        )
    ).first()
    return _exophone(row) if row else None


async def exophone_by_number(conn: AsyncConnection, number: str) -> ExoPhone | None:
    row = (await conn.execute(select(exophones).where(exophones.c.number == number))).first()
    return _exophone(row) if row else None


async def number_owners(conn: AsyncConnection, contact_uri: str) -> set[str]:
    """The accounts that have the number as a user's device or as an ExoPhone."""
    query = union(
        select(devices.c.account_sid).where(devices.c.contact_uri == contact_uri),
        select(exophones.c.account_sid).where(exophones.c.number == contact_uri),
    )
    return {str(row[0]) for row in await conn.execute(query)}


async def list_exophones(conn: AsyncConnection, account_sid: str) -> list[ExoPhone]:
    rows = await conn.execute(
        select(exophones).where(exophones.c.account_sid == account_sid).order_by(exophones.c.number)
    )
    return [_exophone(r) for r in rows]


async def upsert_exophone(
    conn: AsyncConnection,
    account_sid: str,
    number: str,
    now: datetime,
    flow_id: str | None = None,
    *,
    set_flow: bool = False,
) -> ExoPhone:
    existing = await find_exophone(conn, account_sid, number)
    if existing is not None:
        if set_flow:
            await conn.execute(
                update(exophones)
                .where(exophones.c.id == existing.id)
                .values(flow_id=flow_id, updated_at=now)
            )
            return ExoPhone(existing.id, account_sid, number, flow_id)
        return existing
    phone = ExoPhone(new_sid(), account_sid, number, flow_id)
    await conn.execute(
        insert(exophones).values(
            id=phone.id,
            account_sid=account_sid,
            number=number,
            flow_id=flow_id,
            created_at=now,
            updated_at=now,
        )
    )
    return phone


async def delete_exophone(conn: AsyncConnection, account_sid: str, number: str) -> bool:
    result = await conn.execute(
        delete(exophones).where(
            exophones.c.account_sid == account_sid, exophones.c.number == number
        )
    )
    return bool(result.rowcount)
