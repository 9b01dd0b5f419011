"""Users and their devices: lookups for state management and idempotent upserts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.ids import new_sid
from callbridge.store.repo import utc_required
from callbridge.store.tables import devices, users


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    user_id: str
    account_sid: str
    name: str | None
    contact_uri: str
    type: str
    available: bool
    verified: bool
    pending_available: bool | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    account_sid: str
    first_name: str
    last_name: str
    email: str | None
    role: str
    created_at: datetime
    updated_at: datetime

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


def device_from_row(row: Any) -> DeviceRow:
    m = row._mapping
    return DeviceRow(
        id=m["id"],
        user_id=m["user_id"],
        account_sid=m["account_sid"],
        name=m["name"],
        contact_uri=m["contact_uri"],
        type=m["type"],
        available=bool(m["available"]),
        verified=bool(m["verified"]),
        pending_available=m["pending_available"],
        created_at=utc_required(m["created_at"]),
        updated_at=utc_required(m["updated_at"]),
    )


def user_from_row(row: Any) -> UserRow:
    m = row._mapping
    return UserRow(
        id=m["id"],
        account_sid=m["account_sid"],
        first_name=m["first_name"],
        last_name=m["last_name"],
        email=m["email"],
        role=m["role"],
        created_at=utc_required(m["created_at"]),
        updated_at=utc_required(m["updated_at"]),
    )


async def device_by_contact(
    conn: AsyncConnection, account_sid: str, contact_uri: str
) -> tuple[DeviceRow, UserRow] | None:
    row = (
        await conn.execute(
            select(devices, users)
            .join(users, users.c.id == devices.c.user_id)
            .where(devices.c.account_sid == account_sid, devices.c.contact_uri == contact_uri)
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    return device_from_row(row), user_from_row(row)


async def apply_pending_availability(
    conn: AsyncConnection, account_sid: str, contact_uris: list[str], now: datetime
) -> None:
    """Apply availability changes deferred while these devices were on a call."""
    if not contact_uris:
        return
    rows = (
        await conn.execute(
            select(devices.c.id, devices.c.pending_available).where(
                devices.c.account_sid == account_sid,
                devices.c.contact_uri.in_(contact_uris),
                devices.c.pending_available.is_not(None),
            )
        )
    ).all()
    for device_id, pending in rows:
        await conn.execute(
            update(devices)
            .where(devices.c.id == device_id)
            .values(available=bool(pending), pending_available=None, updated_at=now)
        )


async def upsert_user(
    conn: AsyncConnection,
    *,
    account_sid: str,
    first_name: str,
    last_name: str,
    email: str | None,
    role: str,
    match_contact_uris: list[str],
    now: datetime,
) -> str:
    """Find the user by email, else by one of its devices' numbers; update or create it."""
    user_id: str | None = None
    if email:
        user_id = (
            await conn.execute(
                select(users.c.id).where(users.c.account_sid == account_sid, users.c.email == email)
            )
        ).scalar()
    if user_id is None and match_contact_uris:
        user_id = (
            await conn.execute(
                select(devices.c.user_id).where(
                    devices.c.account_sid == account_sid,
                    devices.c.contact_uri.in_(match_contact_uris),
                )
            )
        ).scalar()
    values = {
        "first_name": first_name,
        "last_name": last_name,
        "email": email,
        "role": role,
        "updated_at": now,
    }
    if user_id is None:
        user_id = new_sid()
        await conn.execute(
            insert(users).values(id=user_id, account_sid=account_sid, created_at=now, **values)
        )
    else:
        await conn.execute(update(users).where(users.c.id == user_id).values(**values))
    return user_id


async def upsert_device(
    conn: AsyncConnection,
    *,
    account_sid: str,
    user_id: str,
    contact_uri: str,
    uri_type: str,
    name: str | None,
    available: bool,
    verified: bool,
    now: datetime,
) -> str:
    device_id = (
        await conn.execute(
            select(devices.c.id).where(
                devices.c.account_sid == account_sid, devices.c.contact_uri == contact_uri
            )
        )
    ).scalar()
    values = {
        "user_id": user_id,
        "name": name,
        "type": uri_type,
        "available": available,
        "verified": verified,
        "updated_at": now,
    }
    if device_id is None:
        device_id = new_sid()
        await conn.execute(
            insert(devices).values(
                id=device_id,
                account_sid=account_sid,
                contact_uri=contact_uri,
                created_at=now,
                **values,
            )
        )
    else:
        await conn.execute(update(devices).where(devices.c.id == device_id).values(**values))
    return str(device_id)
