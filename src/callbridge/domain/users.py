"""Users and devices without I/O: the Exotel validation rules for users, and their wire shapes
(user and device objects of the v2 Users API, and v2 call details)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from callbridge.domain.calls import CallStatus
from callbridge.domain.views import format_time

NAME_MIN = 3
NAME_MAX = 20
EMAIL_MAX = 254
DEVICE_NAME_MAX = 128
SIP_PASSWORD_MIN = 8
SIP_PASSWORD_MAX = 128
_NAME_PUNCTUATION = frozenset(".'- ")


def _name_char(char: str) -> bool:
    """Letters (with their combining marks) and digits of any script, or `.`, `'`, `-`, space:
    `José`, `अनिल`, `王小明` are names."""
    return char in _NAME_PUNCTUATION or unicodedata.category(char)[0] in "LMN"


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def sip_password_problem(contact_uri: str, password: str) -> str | None:
    """Why a device cannot register with this password, or None. Never quotes the password."""
    if not contact_uri.startswith("sip:") or "@" not in contact_uri:
        return "only a device with a sip:user@domain contact_uri can register"
    if not SIP_PASSWORD_MIN <= len(password) <= SIP_PASSWORD_MAX:
        return f"must be {SIP_PASSWORD_MIN} to {SIP_PASSWORD_MAX} characters"
    if not password.isprintable():
        return "must not contain control characters"
    return None


def sip_username(contact_uri: str) -> str:
    """The digest username of a registering device: its AOR's user part."""
    return contact_uri.split(":", 1)[1].split("@", 1)[0]


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    USER = "user"


class DeviceStatus(StrEnum):
    FREE = "free"
    BUSY = "busy"


class InvalidUserField(ValueError):
    """A user field breaks Exotel's rules; the message names the field."""


def validate_name(field: str, value: str) -> str:
    """3 to 20 of letters, digits, `.`, `'`, `-`, and a space only right after a period."""
    name = value.strip()
    if not NAME_MIN <= len(name) <= NAME_MAX:
        raise InvalidUserField(f"{field} must be {NAME_MIN} to {NAME_MAX} characters long")
    if not all(_name_char(char) for char in name):
        raise InvalidUserField(
            f"{field} may contain only letters, digits, spaces after a period, ' and -"
        )
    for i, char in enumerate(name):
        if char == " " and (i == 0 or name[i - 1] != "."):
            raise InvalidUserField(f"{field} may contain a space only after a period ('. ')")
    return name


def validate_email(value: str | None) -> str | None:
    """Optional; compared and stored in lower case, so uniqueness ignores case."""
    if value is None:
        return None
    email = value.strip().lower()
    if not email:
        return None
    if len(email) > EMAIL_MAX or not _EMAIL_RE.match(email):
        raise InvalidUserField("email is not a valid email address")
    return email


def validate_role(value: str | None) -> Role:
    if value is None:
        return Role.USER
    try:
        return Role(value.strip().lower())
    except ValueError as exc:
        raise InvalidUserField("role must be admin, supervisor or user") from exc


def validate_device_name(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.strip()
    if len(name) > DEVICE_NAME_MAX:
        raise InvalidUserField(f"device name must be at most {DEVICE_NAME_MAX} characters")
    return name or None


class DeviceLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def contact_uri(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def available(self) -> bool: ...
    @property
    def verified(self) -> bool: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


class UserLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def first_name(self) -> str: ...
    @property
    def last_name(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def role(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class UserFields:
    """Which optional blocks a user object carries (`fields=devices,active_call`)."""

    devices: bool = True
    active_call: bool = True

    @classmethod
    def parse(cls, raw: str | None, default: bool) -> UserFields:
        if raw is None:
            return cls(devices=default, active_call=default)
        names = {part.strip() for part in raw.split(",") if part.strip()}
        unknown = names - {"devices", "active_call", "last_login"}
        if unknown:
            raise InvalidUserField(f"fields: unknown field {sorted(unknown)[0][:32]!r}")
        return cls(devices="devices" in names, active_call="active_call" in names)


def device_view(device: DeviceLike, busy_call: str | None, tz_name: str) -> dict[str, Any]:
    return {
        "id": device.id,
        "name": device.name,
        "contact_uri": device.contact_uri,
        "type": device.type,
        "available": device.available,
        "verified": device.verified,
        "status": (DeviceStatus.BUSY if busy_call else DeviceStatus.FREE).value,
        "date_created": format_time(device.created_at, tz_name),
        "date_updated": format_time(device.updated_at, tz_name),
    }


def user_view(
    user: UserLike,
    devices: Sequence[DeviceLike],
    busy: Mapping[str, str],
    tz_name: str,
    fields: UserFields = UserFields(),
) -> dict[str, Any]:
    """The v2 user object; `busy` maps busy contact URIs to the call holding them."""
    view: dict[str, Any] = {
        "id": user.id,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "role": user.role,
        "date_created": format_time(user.created_at, tz_name),
        "date_updated": format_time(user.updated_at, tz_name),
    }
    if fields.devices:
        view["devices"] = [device_view(d, busy.get(d.contact_uri), tz_name) for d in devices]
    if fields.active_call:
        view["active_call"] = active_call(devices, busy)
    return view


def active_call(devices: Sequence[DeviceLike], busy: Mapping[str, str]) -> str | None:
    for device in devices:
        call_sid = busy.get(device.contact_uri)
        if call_sid:
            return call_sid
    return None


def pick_call_device(devices: Sequence[DeviceLike]) -> DeviceLike | None:
    """The device a v2 call rings: the ON one, else the first (whose OFF state then refuses)."""
    for device in devices:
        if device.available:
            return device
    return devices[0] if devices else None


# -- v2 call details ---------------------------------------------------------------------

V2_STATUS: dict[CallStatus, str] = {
    CallStatus.COMPLETED: "completed",
    CallStatus.FROM_LEG_UNANSWERED: "agent_unanswered",
    CallStatus.TO_LEG_UNANSWERED: "customer_unanswered",
    CallStatus.FROM_LEG_CANCELLED: "agent_canceled",
    CallStatus.FROM_LEG_NO_DIAL: "agent_no_dial",
    CallStatus.TO_LEG_NO_DIAL: "customer_no_dial",
}


@dataclass(frozen=True, slots=True)
class V2Agent:
    user_id: str | None
    user_name: str | None


def v2_call_details(
    v3_details: Mapping[str, Any],
    *,
    agent: V2Agent,
    customer_uri: str | None,
    customer_status: str | None,
) -> dict[str, Any]:
    """The v2 names for a call, built from its v3 `call_details`."""
    status = v3_details.get("status")
    return {
        "call_sid": v3_details["sid"],
        "direction": v3_details["direction"],
        "virtual_number": v3_details["virtual_number"],
        "call_state": v3_details["state"],
        "call_status": V2_STATUS[CallStatus(status)] if status else None,
        "assigned_agent_details": {"user_id": agent.user_id, "user_name": agent.user_name},
        "customer_details": {"contact_uri": customer_uri, "status": customer_status},
        "created_time": v3_details["created_time"],
        "updated_time": v3_details["updated_time"],
        "start_time": v3_details["start_time"],
        "end_time": v3_details["end_time"],
        "total_talk_time": v3_details["total_talk_time"],
        "total_duration": v3_details["total_duration"],
        "recordings": v3_details["recordings"],
        "custom_field": v3_details["custom_field"],
        "digits": v3_details["digits"],
    }
