"""The TOML config file (SPEC §8): strict parsing, then an idempotent apply to the store."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callbridge.clock import Clock
from callbridge.numbers import InvalidContactUri, normalise
from callbridge.store import accounts as account_store
from callbridge.store import users as user_store
from callbridge.store.repo import Store
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
}
USER_KEYS = {"first_name", "last_name", "email", "role", "devices"}
DEVICE_KEYS = {"contact_uri", "name", "available", "verified"}
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
        accounts.append(
            AccountConfig(
                sid=raw["sid"],
                api_key=raw["api_key"],
                api_token=raw["api_token"],
                timezone=timezone,
                region=region,
                allow_voip=bool(_typed(raw, "allow_voip", bool, where))
                if "allow_voip" in raw
                else True,
                rate_limit_per_minute=int(_typed(raw, "rate_limit_per_minute", int, where))
                if "rate_limit_per_minute" in raw
                else default_rate_limit,
                exophones=tuple(exophones),
                users=tuple(users),
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
    """Create or update every account, ExoPhone, user and device; never duplicates rows."""
    now = clock.now()
    async with store.tx() as conn:
        for account in config.accounts:
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
            for number in account.exophones:
                await account_store.upsert_exophone(conn, account.sid, number, now)
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
