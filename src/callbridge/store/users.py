"""Users and their devices: lookups for state management, the Users API's reads and writes,
idempotent upserts from the config file, and pending device verifications."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.ids import new_sid
from callbridge.store.repo import is_unique_violation, utc_required
from callbridge.store.tables import busy_marks, devices, sip_bindings, user_groups, users


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
    # Two queries, not a join: both tables have `id`, `created_at`… columns.
    row = (
        await conn.execute(
            select(devices)
            .where(devices.c.account_sid == account_sid, devices.c.contact_uri == contact_uri)
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    device = device_from_row(row)
    user_row = (await conn.execute(select(users).where(users.c.id == device.user_id))).first()
    if user_row is None:
        return None
    return device, user_from_row(user_row)


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
    available: bool | None,
    verified: bool | None,
    now: datetime,
) -> str:
    """Create the device, or update it. `available`/`verified` of None leave an existing
    device's value alone (so a restart does not undo changes made through the API); a new
    device defaults to ON and unverified."""
    device_id = (
        await conn.execute(
            select(devices.c.id).where(
                devices.c.account_sid == account_sid, devices.c.contact_uri == contact_uri
            )
        )
    ).scalar()
    values: dict[str, Any] = {
        "user_id": user_id,
        "name": name,
        "type": uri_type,
        "updated_at": now,
    }
    if available is not None:
        values["available"] = available
    if verified is not None:
        values["verified"] = verified
    if device_id is None:
        device_id = new_sid()
        await conn.execute(
            insert(devices).values(
                id=device_id,
                account_sid=account_sid,
                contact_uri=contact_uri,
                created_at=now,
                **{"available": True, "verified": False, **values},
            )
        )
    else:
        await conn.execute(update(devices).where(devices.c.id == device_id).values(**values))
    return str(device_id)


# -- the Users API ------------------------------------------------------------------------


class DuplicateContact(Exception):
    """Another device of the account already has this contact URI."""


class DuplicateEmail(Exception):
    """Another user of the account already has this email."""


async def get_user(conn: AsyncConnection, account_sid: str, user_id: str) -> UserRow | None:
    row = (
        await conn.execute(
            select(users).where(users.c.account_sid == account_sid, users.c.id == user_id)
        )
    ).first()
    return user_from_row(row) if row else None


async def lock_user(conn: AsyncConnection, account_sid: str, user_id: str) -> UserRow | None:
    """Read the user and lock its row (PostgreSQL) so device changes of one user serialise;
    SQLite's write transactions are serial already."""
    row = (
        await conn.execute(
            select(users)
            .where(users.c.account_sid == account_sid, users.c.id == user_id)
            .with_for_update()
        )
    ).first()
    return user_from_row(row) if row else None


async def devices_of(conn: AsyncConnection, user_ids: list[str]) -> dict[str, list[DeviceRow]]:
    """Every device of these users, oldest first, keyed by user id."""
    found: dict[str, list[DeviceRow]] = {uid: [] for uid in user_ids}
    if not user_ids:
        return found
    rows = await conn.execute(
        select(devices)
        .where(devices.c.user_id.in_(user_ids))
        .order_by(devices.c.created_at, devices.c.id)
    )
    for row in rows:
        device = device_from_row(row)
        found.setdefault(device.user_id, []).append(device)
    return found


async def email_owner(conn: AsyncConnection, account_sid: str, email: str) -> str | None:
    value = (
        await conn.execute(
            select(users.c.id).where(users.c.account_sid == account_sid, users.c.email == email)
        )
    ).scalar()
    return str(value) if value is not None else None


async def contact_owner(conn: AsyncConnection, account_sid: str, contact_uri: str) -> str | None:
    """The id of the device that has this contact URI in the account, if any."""
    value = (
        await conn.execute(
            select(devices.c.id).where(
                devices.c.account_sid == account_sid, devices.c.contact_uri == contact_uri
            )
        )
    ).scalar()
    return str(value) if value is not None else None


async def list_users(
    conn: AsyncConnection,
    account_sid: str,
    *,
    emails: list[str] | None = None,
    contact_uris: list[str] | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[int, list[UserRow]]:
    """(total matching, one page of users oldest first)."""
    where = [users.c.account_sid == account_sid]
    if emails is not None:
        where.append(users.c.email.in_(emails))
    if contact_uris is not None:
        where.append(
            users.c.id.in_(
                select(devices.c.user_id).where(
                    devices.c.account_sid == account_sid, devices.c.contact_uri.in_(contact_uris)
                )
            )
        )
    total = (await conn.execute(select(func.count()).select_from(users).where(*where))).scalar()
    rows = await conn.execute(
        select(users)
        .where(*where)
        .order_by(users.c.created_at, users.c.id)
        .offset(offset)
        .limit(limit)
    )
    return int(total or 0), [user_from_row(r) for r in rows]


async def create_user(
    conn: AsyncConnection,
    *,
    account_sid: str,
    first_name: str,
    last_name: str,
    email: str | None,
    role: str,
    now: datetime,
) -> str:
    if email is not None and await email_owner(conn, account_sid, email) is not None:
        raise DuplicateEmail(email)
    user_id = new_sid()
    try:
        await conn.execute(
            insert(users).values(
                id=user_id,
                account_sid=account_sid,
                first_name=first_name,
                last_name=last_name,
                email=email,
                role=role,
                created_at=now,
                updated_at=now,
            )
        )
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise DuplicateEmail(email or "") from exc
        raise
    return user_id


async def add_device(
    conn: AsyncConnection,
    *,
    account_sid: str,
    user_id: str,
    contact_uri: str,
    uri_type: str,
    name: str | None,
    available: bool,
    now: datetime,
) -> str:
    """A new, unverified device; its contact URI must be unused in the account."""
    if await contact_owner(conn, account_sid, contact_uri) is not None:
        raise DuplicateContact(contact_uri)
    device_id = new_sid()
    try:
        await conn.execute(
            insert(devices).values(
                id=device_id,
                user_id=user_id,
                account_sid=account_sid,
                name=name,
                contact_uri=contact_uri,
                type=uri_type,
                available=available,
                verified=False,
                created_at=now,
                updated_at=now,
            )
        )
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise DuplicateContact(contact_uri) from exc
        raise
    return device_id


async def update_user(
    conn: AsyncConnection, user_id: str, values: dict[str, Any], now: datetime
) -> None:
    try:
        await conn.execute(
            update(users).where(users.c.id == user_id).values(**values, updated_at=now)
        )
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise DuplicateEmail(str(values.get("email"))) from exc
        raise


async def delete_user(conn: AsyncConnection, user_id: str) -> None:
    await conn.execute(
        delete(sip_bindings).where(
            sip_bindings.c.device_id.in_(select(devices.c.id).where(devices.c.user_id == user_id))
        )
    )
    await conn.execute(delete(devices).where(devices.c.user_id == user_id))
    await conn.execute(delete(user_groups).where(user_groups.c.user_id == user_id))
    await conn.execute(delete(users).where(users.c.id == user_id))


async def busy_call_locked(conn: AsyncConnection, account_sid: str, contact_uri: str) -> str | None:
    """The call holding this contact URI's busy mark, locking the mark (PostgreSQL).

    Locking closes the race with a call ending at the same moment: if the engine is freeing
    the mark, this waits and then sees it gone; if this locks first, the engine's release
    waits for our commit and then applies what we deferred."""
    value = (
        await conn.execute(
            select(busy_marks.c.call_sid)
            .where(busy_marks.c.account_sid == account_sid, busy_marks.c.contact_uri == contact_uri)
            .with_for_update()
        )
    ).scalar()
    return str(value) if value is not None else None


async def update_device(
    conn: AsyncConnection, device_id: str, values: dict[str, Any], now: datetime
) -> None:
    try:
        await conn.execute(
            update(devices).where(devices.c.id == device_id).values(**values, updated_at=now)
        )
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise DuplicateContact(str(values.get("contact_uri"))) from exc
        raise


async def set_sip_credentials(
    conn: AsyncConnection, device_id: str, sip_ha1: str | None, now: datetime
) -> bool:
    """Set (or clear, with None) a device's registration credentials. A change drops the
    device's bindings, so a phone holding the old password must register again; setting the
    same credentials again (the config file at every start) keeps them. True when changed."""
    current = (
        await conn.execute(select(devices.c.sip_ha1).where(devices.c.id == device_id))
    ).scalar()
    if current == sip_ha1:
        return False
    await conn.execute(
        update(devices).where(devices.c.id == device_id).values(sip_ha1=sip_ha1, updated_at=now)
    )
    await conn.execute(delete(sip_bindings).where(sip_bindings.c.device_id == device_id))
    return True


async def get_device(conn: AsyncConnection, account_sid: str, device_id: str) -> DeviceRow | None:
    row = (
        await conn.execute(
            select(devices).where(devices.c.account_sid == account_sid, devices.c.id == device_id)
        )
    ).first()
    return device_from_row(row) if row else None


# -- device verification ------------------------------------------------------------------


def verification_digest(device_id: str, contact_uri: str, code: str) -> str:
    """What `devices.verification_code` holds for a pending attempt: a digest bound to the
    device and its number, never the code itself (16 hex characters fit the column)."""
    return hashlib.sha256(f"{device_id}|{contact_uri}|{code}".encode()).hexdigest()[:16]


async def begin_verification(
    conn: AsyncConnection, device_id: str, digest: str, now: datetime
) -> None:
    """Record the pending attempt; a newer attempt replaces an older one."""
    await conn.execute(
        update(devices)
        .where(devices.c.id == device_id)
        .values(verification_code=digest, updated_at=now)
    )


async def complete_verification(
    conn: AsyncConnection, device_id: str, digest: str, contact_uri: str, now: datetime
) -> bool:
    """Mark the device verified if this attempt is still the pending one for the same number
    (compare-and-set: a changed number or a newer attempt wins)."""
    result = await conn.execute(
        update(devices)
        .where(
            devices.c.id == device_id,
            devices.c.verification_code == digest,
            devices.c.contact_uri == contact_uri,
        )
        .values(verified=True, verification_code=None, updated_at=now)
    )
    return bool(result.rowcount)


async def abandon_verification(conn: AsyncConnection, device_id: str, digest: str) -> None:
    await conn.execute(
        update(devices)
        .where(devices.c.id == device_id, devices.c.verification_code == digest)
        .values(verification_code=None)
    )
