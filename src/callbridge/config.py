"""The TOML config file (SPEC §8): loading it, then an idempotent apply to the store; parsing
and validation live in `config_parse`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.clock import Clock
from callbridge.config_parse import (
    AccountConfig,
    Config,
    ConfigError,
    DeviceConfig,
    ExoPhoneFlowConfig,
    FlowConfig,
    UserConfig,
    parse_config,
)
from callbridge.domain.users import sip_username
from callbridge.registrar.digest import DEFAULT_REALM, ha1
from callbridge.store import accounts as account_store
from callbridge.store import flows as flow_store
from callbridge.store import groups as group_store
from callbridge.store import users as user_store
from callbridge.store.repo import Store
from callbridge.store.tables import flows as flows_table
from callbridge.webhooks.signing import new_secret

PG_CONFIG_LOCK = 7_245_102
"""Advisory lock key that serialises applying the config file across nodes (PostgreSQL)."""

__all__ = [
    "AccountConfig",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "ExoPhoneFlowConfig",
    "FlowConfig",
    "UserConfig",
    "apply_config",
    "load_config",
    "parse_config",
]


def load_config(path: Path, *, default_rate_limit: int = 200) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse_config(text, default_rate_limit=default_rate_limit)


async def apply_config(
    store: Store, config: Config, clock: Clock, *, sip_realm: str = DEFAULT_REALM
) -> None:
    """Create or update every account, ExoPhone, user, device and flow, and attach flows to
    ExoPhones; never duplicates rows. All of it is one transaction. Devices' SIP passwords
    are stored as digest HA1 for `sip_realm` (the registrar's realm)."""
    now = clock.now()
    async with store.tx() as conn:
        if conn.dialect.name == "postgresql":
            # Nodes started together apply the same file at once: one at a time, or the second
            # insert of an account fails. (SQLite writers are serialised already.)
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({PG_CONFIG_LOCK})"))
        for i, account in enumerate(config.accounts):
            await account_store.upsert_account(
                conn,
                sid=account.sid,
                api_key=account.api_key,
                api_token=account.api_token,
                timezone=account.timezone,
                region=account.region,
                allow_voip=account.allow_voip,
                rate_limit_per_minute=account.rate_limit_per_minute,
                webhook_secret=new_secret(),
                now=now,
            )
            phones = {
                number: await account_store.upsert_exophone(conn, account.sid, number, now)
                for number in account.exophones
            }
            for user in account.users:
                user_id = await user_store.upsert_user(
                    conn,
                    account_sid=account.sid,
                    first_name=user.first_name,
                    last_name=user.last_name,
                    email=user.email,
                    role=user.role,
                    match_contact_uris=[d.contact_uri for d in user.devices],
                    now=now,
                )
                for device in user.devices:
                    device_id = await user_store.upsert_device(
                        conn,
                        account_sid=account.sid,
                        user_id=user_id,
                        contact_uri=device.contact_uri,
                        uri_type=device.type,
                        name=device.name,
                        available=device.available,
                        verified=device.verified,
                        now=now,
                    )
                    if device.sip_password is not None:
                        await user_store.set_sip_credentials(
                            conn,
                            device_id,
                            ha1(sip_username(device.contact_uri), sip_realm, device.sip_password),
                            now,
                        )
            await _apply_flows(conn, account, phones, now, f"accounts[{i}]")


async def _apply_flows(
    conn: AsyncConnection,
    account: AccountConfig,
    phones: dict[str, account_store.ExoPhone],
    now: datetime,
    account_where: str,
) -> None:
    """Flows are matched by name within the account: created, or updated when they changed."""
    flow_ids: dict[str, str] = {}
    for i, flow in enumerate(account.flows):
        await _check_references(conn, account.sid, flow, f"{account_where}.flows[{i}]")
        existing = await _flow_by_name(conn, account.sid, flow.name)
        if existing is None:
            created = await flow_store.create_flow(
                conn, account.sid, flow.name, flow.definition, now
            )
            flow_ids[flow.name] = created.id
            continue
        if existing.definition != flow.definition:
            await flow_store.update_flow(conn, existing, flow.name, flow.definition, now)
        flow_ids[flow.name] = existing.id
    for link in account.exophone_flows:
        phone = phones[link.number]
        if phone.flow_id != flow_ids[link.flow]:
            await flow_store.set_exophone_flow(conn, phone.id, flow_ids[link.flow], now)


async def _flow_by_name(
    conn: AsyncConnection, account_sid: str, name: str
) -> flow_store.Flow | None:
    """The oldest flow of that name (the API allows two flows to share one)."""
    flow_id = (
        await conn.execute(
            select(flows_table.c.id)
            .where(flows_table.c.account_sid == account_sid, flows_table.c.name == name)
            .order_by(flows_table.c.created_at, flows_table.c.id)
            .limit(1)
        )
    ).scalar()
    return await flow_store.get_flow(conn, account_sid, flow_id) if flow_id else None


async def _check_references(
    conn: AsyncConnection, account_sid: str, flow: FlowConfig, where: str
) -> None:
    """`user_id` and `group_id` destinations must name rows of the account."""
    destinations = flow.definition.connect.destinations
    users = await group_store.existing_users(
        conn, account_sid, [d.user_id for d in destinations if d.user_id is not None]
    )
    groups = await group_store.existing_groups(
        conn, account_sid, [d.group_id for d in destinations if d.group_id is not None]
    )
    for i, d in enumerate(destinations):
        if d.user_id is not None and d.user_id not in users:
            raise ConfigError(f"{where}.connect.destinations.{i}.user_id: no such user")
        if d.group_id is not None and d.group_id not in groups:
            raise ConfigError(f"{where}.connect.destinations.{i}.group_id: no such group")
