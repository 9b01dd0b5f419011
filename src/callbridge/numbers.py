"""Contact-URI normalisation: phone numbers to E.164, `sip:` URIs to a canonical form."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import phonenumbers

DEFAULT_REGION = "IN"
_SIP_RE = re.compile(r"^sips?:([^@\s;?]+)(?:@([^@\s;?]+))?((?:[;?]\S*)?)$", re.IGNORECASE)
_DIALLABLE_RE = re.compile(r"^[+0-9()\-.\s]{3,32}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class UriType(StrEnum):
    TEL = "tel"
    SIP = "sip"


class InvalidContactUri(ValueError):
    """The string is neither a dialable phone number nor a `sip:` URI."""


@dataclass(frozen=True, slots=True)
class ContactUri:
    uri: str
    type: UriType

    @property
    def is_sip(self) -> bool:
        return self.type is UriType.SIP


def normalise(raw: str, region: str = DEFAULT_REGION) -> ContactUri:
    """Return the canonical form used as the busy-registry key and stored on devices/legs."""
    return _normalise(raw, region)


@lru_cache(maxsize=65536)
def _normalise(raw: str, region: str) -> ContactUri:
    # Parsing is the slow part of a request, and agents and ExoPhones repeat; errors are not
    # cached (lru_cache only keeps returned values).
    value = raw.strip()
    if not value:
        raise InvalidContactUri("empty contact URI")
    if _CONTROL_RE.search(value):
        raise InvalidContactUri("contact URI contains control characters")
    if value.lower().startswith(("sip:", "sips:")):
        match = _SIP_RE.match(value)
        if match is None:
            raise InvalidContactUri(f"invalid SIP URI: {value[:64]}")
        user, host, _params = match.groups()
        scheme = "sips" if value.lower().startswith("sips:") else "sip"
        canonical = f"{scheme}:{user}" + (f"@{host.lower()}" if host else "")
        return ContactUri(canonical, UriType.SIP)
    if value.lower().startswith("tel:"):
        value = value[4:]
    if not _DIALLABLE_RE.match(value):
        raise InvalidContactUri(f"not a phone number: {value[:64]}")
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidContactUri(f"not a phone number: {value[:64]}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidContactUri(f"not a possible phone number: {value[:64]}")
    return ContactUri(
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), UriType.TEL
    )


def normalise_uri(raw: str, region: str = DEFAULT_REGION) -> str:
    return normalise(raw, region).uri
