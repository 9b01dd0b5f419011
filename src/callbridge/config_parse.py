"""The TOML config file (SPEC §8) parsed and validated into frozen value objects; anything
invalid is a ConfigError whose message names the key (`accounts[0].users[1].email`)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers

from callbridge.config_sim import SimConfigError, SimNumberConfig, parse_sim
from callbridge.domain.flows import Destination, FlowDefinition, FlowInvalid, parse_flow_definition
from callbridge.domain.users import SIP_PASSWORD_MAX as MAX_SIP_PASSWORD
from callbridge.domain.users import sip_password_problem
from callbridge.numbers import ContactUri, InvalidContactUri, normalise

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
DEVICE_KEYS = {"contact_uri", "name", "available", "verified", "sip_password"}
FLOW_KEYS = {"name", "connect", "no_agent", "status_callback"}
EXOPHONE_FLOW_KEYS = {"number", "flow"}
ROLES = {"admin", "supervisor", "user"}
# Bounds follow the store's columns, so a file that parses also fits every database.
MAX_SID = 64
MAX_API_KEY = 128
MAX_API_TOKEN = 256
MAX_TIMEZONE = 64
MAX_RATE_LIMIT = 2**31 - 1
MAX_EXOPHONE = 64
MAX_PERSON_NAME = 64
MAX_EMAIL = 254
MAX_DEVICE_NAME = 128
MAX_CONTACT_URI = 255
MAX_FLOW_NAME = 128
SIP_NEEDS_VOIP = "SIP contact URIs need allow_voip = true"


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
    sip_password: str | None = field(default=None, repr=False)
    """The phone's REGISTER password (stored as a digest HA1 only); None: the device does not
    register, or keeps credentials set through the API."""


@dataclass(frozen=True)
class UserConfig:
    first_name: str
    last_name: str
    email: str | None
    """Lower case, as the Users API stores it."""
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
    sim_numbers: tuple[SimNumberConfig, ...] = field(default_factory=tuple)
    """Behaviours of simulated phones (`[[sim.numbers]]`), applied when the driver is `sim`."""


class _FirstSeen:
    """Where each value was first given, so a duplicate names both places; in the store the
    second would silently overwrite the first or break a unique constraint."""

    def __init__(self) -> None:
        self._where: dict[str, str] = {}

    def claim(self, value: str, key: str, shown: str | None = None) -> None:
        first = self._where.setdefault(value, key)
        if first != key:
            raise ConfigError(f"{key} duplicates {first}" + (f" ({shown})" if shown else ""))


@dataclass(frozen=True)
class _FileSeen:
    """Values unique across the whole file."""

    sids: _FirstSeen = field(default_factory=_FirstSeen)
    api_keys: _FirstSeen = field(default_factory=_FirstSeen)
    exophones: _FirstSeen = field(default_factory=_FirstSeen)


@dataclass(frozen=True)
class _Account:
    """What parsing an account's users and flows needs: settings, and what users already hold."""

    region: str
    allow_voip: bool
    emails: _FirstSeen = field(default_factory=_FirstSeen)
    contacts: _FirstSeen = field(default_factory=_FirstSeen)


def parse_config(text: str, *, default_rate_limit: int = 200) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config is not valid TOML: {exc}") from exc
    _check_keys(data, {"accounts", "sim"}, "")
    seen = _FileSeen()
    accounts = tuple(
        _parse_account(raw, f"accounts[{i}]", seen, default_rate_limit)
        for i, raw in enumerate(_tables(data, "accounts", ""))
    )
    try:
        sim_numbers = parse_sim(data.get("sim"))
    except SimConfigError as exc:
        raise ConfigError(str(exc)) from exc
    return Config(accounts, sim_numbers)


def _parse_account(
    raw: dict[str, Any], where: str, seen: _FileSeen, default_rate_limit: int
) -> AccountConfig:
    _check_keys(raw, ACCOUNT_KEYS, "accounts")
    sid = _sid(raw, where)
    seen.sids.claim(sid, f"{where}.sid", repr(sid))
    api_key = _credential(raw, "api_key", where, MAX_API_KEY)
    if ":" in api_key:
        raise ConfigError(f"{where}.api_key must not contain ':' (HTTP Basic splits on it)")
    seen.api_keys.claim(api_key, f"{where}.api_key")
    api_token = _credential(raw, "api_token", where, MAX_API_TOKEN)
    timezone = _timezone(raw, where)
    region = _region(raw, where)
    allow_voip = _optional_bool(raw, "allow_voip", where)
    rate_limit = _rate_limit(raw, where, default_rate_limit)
    # Known before users and flows are read: it decides whether their sip: URIs are allowed.
    account = _Account(region, True if allow_voip is None else allow_voip)
    exophones = _parse_exophones(raw, where, region, seen.exophones)
    users = tuple(
        _parse_user(user, f"{where}.users[{j}]", account)
        for j, user in enumerate(_tables(raw, "users", where))
    )
    flows = _parse_flows(raw, where, account)
    return AccountConfig(
        sid=sid,
        api_key=api_key,
        api_token=api_token,
        timezone=timezone,
        region=region,
        allow_voip=account.allow_voip,
        rate_limit_per_minute=rate_limit,
        exophones=exophones,
        users=users,
        flows=flows,
        exophone_flows=_parse_exophone_flows(raw, where, region, exophones, flows),
    )


def _sid(raw: dict[str, Any], where: str) -> str:
    """The sid is a URL path segment: no `/`, no whitespace or control characters."""
    sid = _credential(raw, "sid", where, MAX_SID)
    if any(c == "/" or c.isspace() or not c.isprintable() for c in sid):
        raise ConfigError(f"{where}.sid must not contain '/' or whitespace")
    return sid


def _credential(raw: dict[str, Any], key: str, where: str, max_length: int) -> str:
    if key not in raw:
        raise ConfigError(f"{where}.{key} is required")
    value = _string(raw, key, where, max_length)
    if not value.strip():
        raise ConfigError(f"{where}.{key} must not be empty")
    return value


def _region(raw: dict[str, Any], where: str) -> str:
    if "region" not in raw:
        return "IN"
    region = _string(raw, "region", where)
    if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"{where}.region {region!r} is not a known region code")
    return region.upper()


def _timezone(raw: dict[str, Any], where: str) -> str:
    if "timezone" not in raw:
        return "Asia/Kolkata"
    timezone = _string(raw, "timezone", where, MAX_TIMEZONE)
    try:
        ZoneInfo(timezone)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError or OSError, by key
        raise ConfigError(f"{where}.timezone {timezone!r} is not a known timezone") from exc
    return timezone


def _rate_limit(raw: dict[str, Any], where: str, default: int) -> int:
    if "rate_limit_per_minute" not in raw:
        return default
    value = raw["rate_limit_per_minute"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RATE_LIMIT:
        raise ConfigError(
            f"{where}.rate_limit_per_minute must be an integer from 0 (unlimited)"
            f" to {MAX_RATE_LIMIT}"
        )
    return value


def _parse_exophones(
    raw: dict[str, Any], where: str, region: str, seen: _FirstSeen
) -> tuple[str, ...]:
    numbers: list[str] = []
    for k, number in enumerate(_strings(raw, "exophones", where)):
        key = f"{where}.exophones[{k}]"
        uri = _contact(number, key, region).uri
        if len(uri) > MAX_EXOPHONE:
            raise ConfigError(f"{key} must be at most {MAX_EXOPHONE} characters")
        seen.claim(uri, key, uri)
        numbers.append(uri)
    return tuple(numbers)


def _parse_user(raw: dict[str, Any], where: str, account: _Account) -> UserConfig:
    _check_keys(raw, USER_KEYS, "accounts.users")
    role = raw.get("role", "user")
    if not isinstance(role, str) or role not in ROLES:
        raise ConfigError(f"{where}.role must be admin, supervisor or user")
    email = _email(raw, where)
    if email is not None:
        account.emails.claim(email, f"{where}.email", email)
    devices = tuple(
        _parse_device(device, f"{where}.devices[{k}]", account)
        for k, device in enumerate(_tables(raw, "devices", where))
    )
    if sum(1 for d in devices if d.available is not False) > 1:
        raise ConfigError(f"{where}.devices: at most one device per user may be available")
    return UserConfig(
        first_name=_optional_string(raw, "first_name", where, MAX_PERSON_NAME) or "",
        last_name=_optional_string(raw, "last_name", where, MAX_PERSON_NAME) or "",
        email=email,
        role=role,
        devices=devices,
    )


def _email(raw: dict[str, Any], where: str) -> str | None:
    """Lower case, compared so; the Users API stores and searches emails the same way."""
    email = _optional_string(raw, "email", where, MAX_EMAIL)
    if email is None:
        return None
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or not domain or "@" in domain or any(c.isspace() for c in email):
        raise ConfigError(f"{where}.email must be an address like name@example.com")
    return email


def _parse_device(raw: dict[str, Any], where: str, account: _Account) -> DeviceConfig:
    _check_keys(raw, DEVICE_KEYS, "accounts.users.devices")
    if "contact_uri" not in raw:
        raise ConfigError(f"{where}.contact_uri is required")
    key = f"{where}.contact_uri"
    uri = _contact(_string(raw, "contact_uri", where), key, account.region)
    if len(uri.uri) > MAX_CONTACT_URI:
        raise ConfigError(f"{key} must be at most {MAX_CONTACT_URI} characters")
    if uri.is_sip and not account.allow_voip:
        raise ConfigError(f"{key}: {SIP_NEEDS_VOIP}")
    account.contacts.claim(uri.uri, key, uri.uri)
    password = _optional_string(raw, "sip_password", where, MAX_SIP_PASSWORD)
    if password is not None:
        problem = sip_password_problem(uri.uri, password)
        if problem is not None:
            raise ConfigError(f"{where}.sip_password: {problem}")
    return DeviceConfig(
        contact_uri=uri.uri,
        type=uri.type.value,
        name=_optional_string(raw, "name", where, MAX_DEVICE_NAME),
        available=_optional_bool(raw, "available", where),
        verified=_optional_bool(raw, "verified", where),
        sip_password=password,
    )


def _parse_flows(
    raw: dict[str, Any], account_where: str, account: _Account
) -> tuple[FlowConfig, ...]:
    found: list[FlowConfig] = []
    for i, table in enumerate(_tables(raw, "flows", account_where)):
        where = f"{account_where}.flows[{i}]"
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
        found.append(FlowConfig(name, _normalised(definition, where, account)))
    return tuple(found)


def _normalised(definition: FlowDefinition, where: str, account: _Account) -> FlowDefinition:
    """Destination numbers in E.164 (as the API stores them), SIP only where VoIP is allowed."""
    destinations: list[Destination] = []
    for i, d in enumerate(definition.connect.destinations):
        if d.contact_uri is not None:
            key = f"{where}.connect.destinations.{i}.contact_uri"
            contact = _contact(d.contact_uri, key, account.region)
            if contact.is_sip and not account.allow_voip:
                raise ConfigError(f"{key}: {SIP_NEEDS_VOIP}")
            d = Destination(contact_uri=contact.uri)
        destinations.append(d)
    connect = replace(definition.connect, destinations=tuple(destinations))
    return replace(definition, connect=connect)


def _parse_exophone_flows(
    raw: dict[str, Any],
    account_where: str,
    region: str,
    exophones: tuple[str, ...],
    flows: tuple[FlowConfig, ...],
) -> tuple[ExoPhoneFlowConfig, ...]:
    found: list[ExoPhoneFlowConfig] = []
    for i, table in enumerate(_tables(raw, "exophone_flows", account_where)):
        where = f"{account_where}.exophone_flows[{i}]"
        _check_keys(table, EXOPHONE_FLOW_KEYS, "accounts.exophone_flows")
        for required in ("number", "flow"):
            if required not in table:
                raise ConfigError(f"{where}.{required} is required")
        number = _contact(_string(table, "number", where), f"{where}.number", region).uri
        if number not in exophones:
            raise ConfigError(f"{where}.number: {number} is not in {account_where}.exophones")
        if any(link.number == number for link in found):
            raise ConfigError(f"{where}.number: {number} is given a flow twice")
        flow = _string(table, "flow", where).strip()
        if not any(f.name == flow for f in flows):
            raise ConfigError(f"{where}.flow: no flow named {flow!r} in {account_where}.flows")
        found.append(ExoPhoneFlowConfig(number, flow))
    return tuple(found)


def _contact(raw: str, key: str, region: str) -> ContactUri:
    try:
        return normalise(raw, region)
    except InvalidContactUri as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown config key {where}.{key}")


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _tables(table: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """An optional array of tables (`[[key]]`); absent is empty."""
    values = _array(table, key, where, "tables")
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise ConfigError(f"{_path(where, key)}[{i}] must be a table")
    return values


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    """An optional array of strings; absent is empty."""
    values = _array(table, key, where, "strings")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ConfigError(f"{_path(where, key)}[{i}] must be a string")
    return values


def _array(table: dict[str, Any], key: str, where: str, of: str) -> list[Any]:
    values = table.get(key, [])
    if not isinstance(values, list):
        raise ConfigError(f"{_path(where, key)} must be an array of {of}")
    return values


def _string(table: dict[str, Any], key: str, where: str, max_length: int | None = None) -> str:
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string")
    if max_length is not None and len(value) > max_length:
        raise ConfigError(f"{where}.{key} must be at most {max_length} characters")
    return value


def _optional_string(
    table: dict[str, Any], key: str, where: str, max_length: int | None = None
) -> str | None:
    return _string(table, key, where, max_length) if key in table else None


def _optional_bool(table: dict[str, Any], key: str, where: str) -> bool | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false")
    return value
