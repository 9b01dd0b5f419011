"""Registrar bindings and devices' SIP credentials: who may register an AOR, the bindings a
REGISTER writes, and whether (and where) a `sip:` device can be reached now.

A device *registers* when it has SIP credentials (`devices.sip_ha1`); such a device is reachable
only while it has a binding that has not expired. Other `sip:` devices are dialled as written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Exists

from callbridge.domain.registration import RegisterPlan, StoredBinding
from callbridge.store.repo import utc_required
from callbridge.store.tables import devices, sip_bindings


@dataclass(frozen=True, slots=True)
class RegisteringDevice:
    id: str
    account_sid: str
    ha1: str


@dataclass(frozen=True, slots=True)
class Binding:
    contact: str
    call_id: str
    cseq: int
    expires_at: datetime


def live_binding(now: datetime) -> Exists:
    """An EXISTS clause: the device in the enclosing query has a binding alive at `now`."""
    return exists().where(
        and_(sip_bindings.c.device_id == devices.c.id, sip_bindings.c.expires_at > now)
    )


async def devices_for_aor(conn: AsyncConnection, aor: str) -> list[RegisteringDevice]:
    """Devices (in any account) whose contact URI is this AOR and that have credentials."""
    rows = await conn.execute(
        select(devices.c.id, devices.c.account_sid, devices.c.sip_ha1).where(
            devices.c.contact_uri == aor, devices.c.sip_ha1.is_not(None)
        )
    )
    return [RegisteringDevice(r[0], r[1], r[2]) for r in rows]


async def lock_bindings(
    conn: AsyncConnection, device_id: str, now: datetime
) -> dict[str, StoredBinding] | None:
    """Lock the device (PostgreSQL; SQLite write transactions are already exclusive), drop its
    expired bindings and return the live ones; None when the device is gone or has no
    credentials any more."""
    locked = (
        await conn.execute(
            select(devices.c.id)
            .where(devices.c.id == device_id, devices.c.sip_ha1.is_not(None))
            .with_for_update()
        )
    ).scalar()
    if locked is None:
        return None
    await conn.execute(
        delete(sip_bindings).where(
            sip_bindings.c.device_id == device_id, sip_bindings.c.expires_at <= now
        )
    )
    rows = await conn.execute(
        select(sip_bindings.c.contact, sip_bindings.c.call_id, sip_bindings.c.cseq).where(
            sip_bindings.c.device_id == device_id
        )
    )
    return {r[0]: StoredBinding(r[1], int(r[2])) for r in rows}


async def apply_plan(
    conn: AsyncConnection,
    device_id: str,
    plan: RegisterPlan,
    stored: Mapping[str, StoredBinding],
    *,
    call_id: str,
    cseq: int,
    source: str,
    user_agent: str | None,
    now: datetime,
) -> None:
    if plan.removals:
        await conn.execute(
            delete(sip_bindings).where(
                sip_bindings.c.device_id == device_id,
                sip_bindings.c.contact.in_(sorted(plan.removals)),
            )
        )
    for contact, expires_s in plan.upserts.items():
        values = {
            "call_id": call_id,
            "cseq": cseq,
            "expires_at": now + timedelta(seconds=expires_s),
            "source": source,
            "user_agent": user_agent,
            "updated_at": now,
        }
        if contact in stored:
            await conn.execute(
                update(sip_bindings)
                .where(sip_bindings.c.device_id == device_id, sip_bindings.c.contact == contact)
                .values(**values)
            )
        else:
            await conn.execute(
                insert(sip_bindings).values(device_id=device_id, contact=contact, **values)
            )


async def bindings_of(conn: AsyncConnection, device_id: str, now: datetime) -> list[Binding]:
    """The device's live bindings, newest first."""
    rows = await conn.execute(
        select(
            sip_bindings.c.contact,
            sip_bindings.c.call_id,
            sip_bindings.c.cseq,
            sip_bindings.c.expires_at,
        )
        .where(sip_bindings.c.device_id == device_id, sip_bindings.c.expires_at > now)
        .order_by(sip_bindings.c.updated_at.desc(), sip_bindings.c.contact)
    )
    return [Binding(r[0], r[1], int(r[2]), utc_required(r[3])) for r in rows]


@dataclass(frozen=True, slots=True)
class Reach:
    """How to reach a contact URI now: `registers` is False for devices dialled as written;
    otherwise `contact` is the newest live binding, or None when it has none."""

    registers: bool
    contact: str | None = None


async def reach(conn: AsyncConnection, account_sid: str, contact_uri: str, now: datetime) -> Reach:
    device = (
        await conn.execute(
            select(devices.c.id).where(
                devices.c.account_sid == account_sid,
                devices.c.contact_uri == contact_uri,
                devices.c.sip_ha1.is_not(None),
            )
        )
    ).scalar()
    if device is None:
        return Reach(registers=False)
    live = await bindings_of(conn, str(device), now)
    return Reach(registers=True, contact=live[0].contact if live else None)


async def unreachable_uris(
    conn: AsyncConnection, account_sid: str, contact_uris: Sequence[str], now: datetime
) -> set[str]:
    """Which of these contact URIs are registering devices with no live binding."""
    sip = sorted({u for u in contact_uris if u.startswith(("sip:", "sips:"))})
    if not sip:
        return set()
    rows = await conn.execute(
        select(devices.c.contact_uri).where(
            devices.c.account_sid == account_sid,
            devices.c.contact_uri.in_(sip),
            devices.c.sip_ha1.is_not(None),
            ~live_binding(now),
        )
    )
    return {r[0] for r in rows}


async def purge_expired(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(delete(sip_bindings).where(sip_bindings.c.expires_at <= now))
    return int(result.rowcount or 0)
