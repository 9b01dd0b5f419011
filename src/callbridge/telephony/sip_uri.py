"""Pure SIP mappings: a contact URI to the Request-URI of an INVITE on the trunk, an ExoPhone to
the caller id, an inbound From/To header to a contact URI, a final SIP status to a leg outcome."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import phonenumbers

from callbridge.numbers import DEFAULT_REGION, InvalidContactUri, normalise
from callbridge.telephony.base import LegEventKind

NumberFormat = Literal["e164", "e164_no_plus", "national"]
Transport = Literal["udp", "tcp"]

_NAME_ADDR_RE = re.compile(r"<([^>]*)>")
_USER_RE = re.compile(r"^sips?:([^@;?]+)@", re.IGNORECASE)
_PHONE_USER_RE = re.compile(r"^\+?[0-9]{3,20}$")


class SipTargetError(ValueError):
    """The contact URI cannot be turned into a SIP target (bad number, or no trunk for numbers)."""


@dataclass(frozen=True, slots=True)
class Trunk:
    """Where PSTN numbers go: the trunk's host/port/transport and how it wants numbers written."""

    host: str | None
    port: int = 5060
    transport: Transport = "udp"
    number_format: NumberFormat = "e164"
    region: str = DEFAULT_REGION

    def host_port(self) -> str:
        if self.host is None:
            raise SipTargetError("no SIP trunk host configured (CALLBRIDGE_SIP_TRUNK_HOST)")
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    def uri_params(self) -> str:
        return ";transport=tcp" if self.transport == "tcp" else ""


def format_number(e164: str, number_format: NumberFormat, region: str = DEFAULT_REGION) -> str:
    """Write an E.164 number the way the trunk expects it in the Request-URI user part."""
    if number_format == "e164":
        return e164
    if number_format == "e164_no_plus":
        return e164.removeprefix("+")
    parsed = phonenumbers.parse(e164, region)
    national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    return "".join(ch for ch in national if ch.isdigit())


def dial_target(contact_uri: str, trunk: Trunk) -> str:
    """The SIP URI to INVITE for a device or customer contact URI.

    A `sip:` URI with a host is dialled as is (a SIP phone, directly or via the outbound
    proxy); a `sip:` URI without a host, and every phone number, go to the trunk."""
    try:
        contact = normalise(contact_uri, trunk.region)
    except InvalidContactUri as exc:
        raise SipTargetError(str(exc)) from exc
    if contact.is_sip:
        uri = contact.uri
        if "@" in uri:
            return _with_params(uri, contact_uri)
        return f"{uri}@{trunk.host_port()}{trunk.uri_params()}"
    user = format_number(contact.uri, trunk.number_format, trunk.region)
    return f"sip:{user}@{trunk.host_port()}{trunk.uri_params()}"


def caller_id_uri(number: str, domain: str, region: str = DEFAULT_REGION) -> str:
    """The From URI that shows `number` (an ExoPhone) as caller id; E.164 with `+`."""
    try:
        contact = normalise(number, region)
    except InvalidContactUri as exc:
        raise SipTargetError(str(exc)) from exc
    if contact.is_sip:
        return contact.uri if "@" in contact.uri else f"{contact.uri}@{domain}"
    return f"sip:{contact.uri}@{domain}"


def contact_from_header(value: str, region: str = DEFAULT_REGION) -> str:
    """An inbound From/To header (`"Name" <sip:+9198…@host>;tag=…`) as a contact URI: the
    E.164 number when the user part is a phone number, else the canonical `sip:` URI."""
    match = _NAME_ADDR_RE.search(value)
    uri = (match.group(1) if match else value.split(";", 1)[0]).strip()
    user_match = _USER_RE.match(uri)
    user = user_match.group(1) if user_match else None
    if user is not None and _PHONE_USER_RE.match(user):
        national = user.startswith(("+", "0")) or len(user) <= 10
        candidate = user if national else f"+{user}"
        try:
            return normalise(candidate, region).uri
        except InvalidContactUri:
            pass
    try:
        return normalise(uri, region).uri
    except InvalidContactUri:
        return uri


def _with_params(canonical: str, raw: str) -> str:
    """Keep URI parameters such as `;transport=tcp` that a device's contact URI carries."""
    raw = raw.strip()
    semi = raw.find(";")
    return canonical + raw[semi:] if semi != -1 else canonical


NOT_DIALLABLE = frozenset({401, 403, 404, 407, 410, 484, 485, 604})
"""Final statuses that mean the leg could not be dialled at all: the trunk refused us
(credentials, permission) or the number does not exist. The call then ends `…_no_dial`."""


def leg_outcome(status_code: int) -> LegEventKind:
    """What an unanswered outbound leg's final SIP status means to the engine.

    486/600 busy; 408/480/487 no answer (timeout, temporarily unavailable, cancelled
    upstream); 5xx and NOT_DIALLABLE failed; 603 and every other 4xx/6xx rejected; anything
    else (0 = local transport error, 3xx redirects we do not follow) failed."""
    if status_code in (486, 600):
        return LegEventKind.BUSY
    if status_code in (408, 480, 487):
        return LegEventKind.NO_ANSWER
    if 500 <= status_code < 600 or status_code in NOT_DIALLABLE:
        return LegEventKind.FAILED
    if 400 <= status_code < 700:
        return LegEventKind.REJECTED
    return LegEventKind.FAILED
