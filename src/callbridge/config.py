"""The TOML config file (SPEC §8): strict parsing, then an idempotent apply to the store."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.clock import Clock
from callbridge.domain.flows import Destination, FlowDefinition, FlowInvalid, parse_flow_definition
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store import accounts as account_store
from callbridge.store import flows as flow_store
from callbridge.store import groups as group_store
from callbridge.store import users as user_store
from callbridge.store.repo import Store
from callbridge.store.tables import flows as flows_table
from callbridge.webhooks.signing import new_secret

ACCOUNT_KEYS = {
    "sid",
    "api_key",
    "api_token",
    "timezone",
    "allow_voip",
    "rate_limit_per_minute",
    "exophones",
    "users",
    "region",
    "flows",
    "exophone_flows",
}
USER_KEYS = {"first_name", "last_name", "email", "role", "devices"}
DEVICE_KEYS = {"contact_uri", "name", "available", "verified"}
FLOW_KEYS = {"name", "connect", "no_agent", "status_callback"}
EXOPHONE_FLOW_KEYS = {"number", "flow"}
MAX_FLOW_NAME = 128
ROLES = {"admin", "supervisor", "user"}


class ConfigError(ValueError):
    """The config file is invalid; the message names the key."""


@dataclass(frozen=True)
class DeviceConfig:
    contact_uri: str
    type: str
    name: str | None
    available: bool | None
    """None: not in the file — a new device is ON, an existing one keeps its value."""
    verified: bool | None


@dataclass(frozen=True)
class UserConfig:
    first_name: str
    last_name: str
    email: str | None
    role: str
    devices: tuple[DeviceConfig, ...]


@dataclass(frozen=True)
class FlowConfig:
    name: str
    """The flow's identity across restarts, within its account."""
    definition: FlowDefinition


@dataclass(frozen=True)
class ExoPhoneFlowConfig:
    number: str
    flow: str
    """The name of one of the account's flows in the file."""


@dataclass(frozen=True)
class AccountConfig:
    sid: str
    api_key: str
    api_token: str
    timezone: str = "Asia/Kolkata"
    region: str = "IN"
    allow_voip: bool = True
    rate_limit_per_minute: int = 200
    exophones: tuple[str, ...] = ()
    users: tuple[UserConfig, ...] = ()
    flows: tuple[FlowConfig, ...] = ()
    exophone_flows: tuple[ExoPhoneFlowConfig, ...] = ()


@dataclass(frozen=True)
class Config:
    accounts: tuple[AccountConfig, ...] = field(default_factory=tuple)


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown config key {where}.{key}")


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if isinstance(value, bool) and kind is int:
        raise ConfigError(f"{where}.{key} must be an integer")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key} must be {name}")
    return value


def parse_config(text: str, *, default_rate_limit: int = 200) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config is not valid TOML: {exc}") from exc
    _check_keys(data, {"accounts"}, "")
    accounts: list[AccountConfig] = []
    for i, raw in enumerate(data.get("accounts", [])):
        where = f"accounts[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        _check_keys(raw, ACCOUNT_KEYS, "accounts")
        for required in ("sid", "api_key", "api_token"):
            if required not in raw:
                raise ConfigError(f"{where}.{required} is required")
            _typed(raw, required, str, where)
        region = str(raw.get("region", "IN"))
        timezone = str(raw.get("timezone", "Asia/Kolkata"))
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(timezone)
        except Exception as exc:
            raise ConfigError(f"{where}.timezone {timezone!r} is not a known timezone") from exc
        exophones: list[str] = []
        for number in raw.get("exophones", []):
            try:
                exophones.append(normalise(str(number), region).uri)
            except InvalidContactUri as exc:
                raise ConfigError(f"{where}.exophones: {exc}") from exc
        users: list[UserConfig] = []
        for j, user in enumerate(raw.get("users", [])):
            users.append(_parse_user(user, f"{where}.users[{j}]", region))
        allow_voip = bool(_typed(raw, "allow_voip", bool, where)) if "allow_voip" in raw else True
        flows = _parse_flows(raw.get("flows", []), where, region, allow_voip)
        exophone_flows = _parse_exophone_flows(
            raw.get("exophone_flows", []), where, region, exophones, flows
        )
        accounts.append(
            AccountConfig(
                sid=raw["sid"],
                api_key=raw["api_key"],
                api_token=raw["api_token"],
                timezone=timezone,
                region=region,
                allow_voip=allow_voip,
                rate_limit_per_minute=int(_typed(raw, "rate_limit_per_minute", int, where))
                if "rate_limit_per_minute" in raw
                else default_rate_limit,
                exophones=tuple(exophones),
                users=tuple(users),
                flows=flows,
                exophone_flows=exophone_flows,
            )
        )
    return Config(tuple(accounts))


def _parse_user(raw: Any, where: str, region: str) -> UserConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    _check_keys(raw, USER_KEYS, "accounts.users")
    role = str(raw.get("role", "user"))
    if role not in ROLES:
        raise ConfigError(f"{where}.role must be admin, supervisor or user")
    devices: list[DeviceConfig] = []
    for k, device in enumerate(raw.get("devices", [])):
        dwhere = f"{where}.devices[{k}]"
        if not isinstance(device, dict):
            raise ConfigError(f"{dwhere} must be a table")
        _check_keys(device, DEVICE_KEYS, "accounts.users.devices")
        if "contact_uri" not in device:
            raise ConfigError(f"{dwhere}.contact_uri is required")
        try:
            uri = normalise(str(device["contact_uri"]), region)
        except InvalidContactUri as exc:
            raise ConfigError(f"{dwhere}.contact_uri: {exc}") from exc
        devices.append(
            DeviceConfig(
                contact_uri=uri.uri,
                type=uri.type.value,
                name=device.get("name"),
                available=_optional_bool(device, "available", dwhere),
                verified=_optional_bool(device, "verified", dwhere),
            )
        )
    if sum(1 for d in devices if d.available is not False) > 1:
        raise ConfigError(f"{where}.devices: at most one device per user may be available")
    return UserConfig(
        first_name=str(raw.get("first_name", "")),
        last_name=str(raw.get("last_name", "")),
        email=raw.get("email"),
        role=role,
        devices=tuple(devices),
    )


def _parse_flows(
    raw: Any, account_where: str, region: str, allow_voip: bool
) -> tuple[FlowConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{account_where}.flows must be an array of tables")
    found: list[FlowConfig] = []
    for i, table in enumerate(raw):
        where = f"{account_where}.flows[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        _check_keys(table, FLOW_KEYS, "accounts.flows")
        name = table.get("name")
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_FLOW_NAME:
            raise ConfigError(f"{where}.name: a string of 1 to {MAX_FLOW_NAME} characters")
        name = name.strip()
        if any(f.name == name for f in found):
            raise ConfigError(f"{where}.name: {name!r} names two flows of this account")
        try:
            definition = parse_flow_definition({k: v for k, v in table.items() if k != "name"})
        except FlowInvalid as exc:
            raise ConfigError(f"{where}.{exc}") from exc
        found.append(FlowConfig(name, _normalised(definition, where, region, allow_voip)))
    return tuple(found)


def _normalised(
    definition: FlowDefinition, where: str, region: str, allow_voip: bool
) -> FlowDefinition:
    """Destination numbers in E.164 (as the API stores them), SIP only where VoIP is allowed."""
    destinations: list[Destination] = []
    for i, d in enumerate(definition.connect.destinations):
        if d.contact_uri is not None:
            key = f"{where}.connect.destinations.{i}.contact_uri"
            try:
                contact = normalise(d.contact_uri, region)
            except InvalidContactUri as exc:
                raise ConfigError(f"{key}: {exc}") from exc
            if contact.is_sip and not allow_voip:
                raise ConfigError(f"{key}: SIP contact URIs need allow_voip = true")
            d = Destination(contact_uri=contact.uri)
        destinations.append(d)
    connect = replace(definition.connect, destinations=tuple(destinations))
    return replace(definition, connect=connect)


def _parse_exophone_flows(
    raw: Any,
    account_where: str,
    region: str,
    exophones: list[str],
    flows: tuple[FlowConfig, ...],
) -> tuple[ExoPhoneFlowConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{account_where}.exophone_flows must be an array of tables")
    found: list[ExoPhoneFlowConfig] = []
    for i, table in enumerate(raw):
        where = f"{account_where}.exophone_flows[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        _check_keys(table, EXOPHONE_FLOW_KEYS, "accounts.exophone_flows")
        for required in ("number", "flow"):
            if required not in table:
                raise ConfigError(f"{where}.{required} is required")
            _typed(table, required, str, where)
        try:
            number = normalise(table["number"], region).uri
        except InvalidContactUri as exc:
            raise ConfigError(f"{where}.number: {exc}") from exc
        if number not in exophones:
            raise ConfigError(f"{where}.number: {number} is not in {account_where}.exophones")
        if any(link.number == number for link in found):
            raise ConfigError(f"{where}.number: {number} is given a flow twice")
        flow = table["flow"].strip()
        if not any(f.name == flow for f in flows):
            raise ConfigError(f"{where}.flow: no flow named {flow!r} in {account_where}.flows")
        found.append(ExoPhoneFlowConfig(number, flow))
    return tuple(found)


def _optional_bool(table: dict[str, Any], key: str, where: str) -> bool | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false")
    return value


def load_config(path: Path, *, default_rate_limit: int = 200) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse_config(text, default_rate_limit=default_rate_limit)


async def apply_config(store: Store, config: Config, clock: Clock) -> None:
    """Create or update every account, ExoPhone, user, device and flow, and attach flows to
    ExoPhones; never duplicates rows. All of it is one transaction."""
    now = clock.now()
    async with store.tx() as conn:
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
                    await user_store.upsert_device(
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
