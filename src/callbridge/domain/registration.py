"""The rules of a SIP registrar (RFC 3261 §10.3) over one device's bindings: which expiry is
granted, which bindings a REGISTER adds, refreshes or removes, and when it is refused. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """Bounds on registration lifetimes, in seconds."""

    min_s: int = 60
    max_s: int = 3600
    default_s: int = 3600
    max_bindings: int = 10
    """Contacts one device may hold at once (a phone with a few apps, not a flood)."""


@dataclass(frozen=True, slots=True)
class RequestedContact:
    uri: str
    expires_s: int | None
    """The Contact's `expires` parameter; None when it has none."""


@dataclass(frozen=True, slots=True)
class StoredBinding:
    call_id: str
    cseq: int


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    contacts: Sequence[RequestedContact]
    wildcard: bool
    """`Contact: *` (remove every binding)."""
    expires_header_s: int | None
    call_id: str
    cseq: int


@dataclass(frozen=True, slots=True)
class RegisterPlan:
    """What to write: contacts to (re)bind with their granted lifetime, contacts to remove."""

    upserts: Mapping[str, int]
    removals: frozenset[str]


@dataclass(frozen=True, slots=True)
class RegisterRefusal:
    """The REGISTER is refused whole with this SIP status (nothing is written)."""

    status: int
    reason: str
    min_expires_s: int | None = None


def requested_expiry(contact: RequestedContact, header_s: int | None, policy: ExpiryPolicy) -> int:
    """The lifetime asked for: the Contact's parameter, else the Expires header, else ours."""
    if contact.expires_s is not None:
        return contact.expires_s
    if header_s is not None:
        return header_s
    return policy.default_s


def plan_register(
    request: RegisterRequest, stored: Mapping[str, StoredBinding], policy: ExpiryPolicy
) -> RegisterPlan | RegisterRefusal:
    """Apply RFC 3261 §10.3 steps 6 to 8 to one device's live bindings.

    A REGISTER with no Contact only asks for the current bindings (an empty plan). A binding
    refreshed within its own Call-ID must carry a higher CSeq, else the request is out of
    order (500) and nothing changes; a new Call-ID (a rebooted phone) always replaces it."""
    if request.wildcard:
        if request.contacts or request.expires_header_s != 0:
            return RegisterRefusal(400, "Contact * needs Expires: 0 and no other Contact")
        removals = {
            uri
            for uri, binding in stored.items()
            if not (binding.call_id == request.call_id and request.cseq <= binding.cseq)
        }
        return RegisterPlan({}, frozenset(removals))
    upserts: dict[str, int] = {}
    removals_set: set[str] = set()
    for contact in request.contacts:
        asked = requested_expiry(contact, request.expires_header_s, policy)
        if asked < 0:
            return RegisterRefusal(400, "expires must not be negative")
        if 0 < asked < policy.min_s:
            return RegisterRefusal(423, "Interval Too Brief", min_expires_s=policy.min_s)
        current = stored.get(contact.uri)
        if (
            current is not None
            and current.call_id == request.call_id
            and request.cseq <= current.cseq
        ):
            return RegisterRefusal(500, "out-of-order REGISTER (CSeq not higher)")
        if asked == 0:
            upserts.pop(contact.uri, None)
            removals_set.add(contact.uri)
        else:
            removals_set.discard(contact.uri)
            upserts[contact.uri] = min(asked, policy.max_s)
    kept = (set(stored) - removals_set) | set(upserts)
    if len(kept) > policy.max_bindings:
        return RegisterRefusal(403, f"at most {policy.max_bindings} contacts per device")
    return RegisterPlan(upserts, frozenset(removals_set & set(stored)))
