"""Picking agents for an inbound call: who may be offered it now, in what order, per strategy —
and reading a dynamic-URL (Exotel CCM programmable connect) answer. Pure: works on snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from callbridge.domain.calls import LegStatus
from callbridge.domain.flows import Strategy
from callbridge.domain.options import RecordingChannels
from callbridge.numbers import InvalidContactUri, UriType, normalise

MAX_DYNAMIC_TARGETS = 50


class SkipReason(StrEnum):
    NO_DEVICE = "no_device"
    OFF = "off"
    UNREACHABLE = "unreachable"
    """A `sip:` phone that registers, with no live registration."""
    UNVERIFIED = "unverified"
    BUSY = "busy"
    COOLDOWN = "cooldown"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One agent (or bare number) that a flow could ring, as the store saw it a moment ago."""

    key: str
    """Identity for de-duplication and round robin: the user id, else the contact URI."""
    contact_uri: str
    position: int
    """Order in the flow's expanded destination list (groups expand in member order)."""
    user_id: str | None = None
    name: str | None = None
    group_id: int | None = None
    group_name: str | None = None
    has_device: bool = True
    available: bool = True
    reachable: bool = True
    """False for a device that registers and has no live registration."""
    verified: bool = True
    busy: bool = False
    cooldown_until: datetime | None = None
    last_call_ended_at: datetime | None = None
    state_managed: bool = True
    """Mark busy while ringing/talking and skip when busy (always true for users' devices)."""


@dataclass(frozen=True, slots=True)
class Plan:
    ordered: tuple[Candidate, ...]
    """Eligible candidates not yet tried, in the order to offer the call."""
    ring_all: bool
    """Ring every one of `ordered` at once (simultaneous); else one at a time, in order."""
    skipped: tuple[tuple[Candidate, SkipReason], ...]


def skip_reason(candidate: Candidate, now: datetime) -> SkipReason | None:
    """Why a candidate cannot be offered a call now (SPEC: busy, OFF and unverified are skipped,
    and so are registering phones with no live registration), in SPEC §2.2's order."""
    if candidate.user_id is not None:
        if not candidate.has_device:
            return SkipReason.NO_DEVICE
        if not candidate.available:
            return SkipReason.OFF
        if not candidate.reachable:
            return SkipReason.UNREACHABLE
        if not candidate.verified:
            return SkipReason.UNVERIFIED
    if candidate.state_managed and candidate.busy:
        return SkipReason.BUSY
    if candidate.cooldown_until is not None and candidate.cooldown_until > now:
        return SkipReason.COOLDOWN
    return None


def skipped_leg_status(reason: SkipReason) -> LegStatus:
    """How a skipped agent shows in the leg history: busy (on a call, cooling down) or failed."""
    return LegStatus.BUSY if reason in (SkipReason.BUSY, SkipReason.COOLDOWN) else LegStatus.FAILED


def dedupe(candidates: list[Candidate]) -> list[Candidate]:
    """The first occurrence of each agent and each number wins (an agent in two groups)."""
    seen: set[str] = set()
    out: list[Candidate] = []
    for c in candidates:
        if c.key in seen or (c.contact_uri and c.contact_uri in seen):
            continue
        seen.add(c.key)
        if c.contact_uri:
            seen.add(c.contact_uri)
        out.append(c)
    return out


def order_by_strategy(
    strategy: Strategy, candidates: list[Candidate], last_offered: str | None
) -> list[Candidate]:
    """All candidates in the order the strategy offers calls (eligibility aside)."""
    by_position = sorted(candidates, key=lambda c: c.position)
    if strategy is Strategy.ROUND_ROBIN:
        keys = [c.key for c in by_position]
        if last_offered in keys:
            start = keys.index(last_offered) + 1
            return by_position[start:] + by_position[:start]
        return by_position
    if strategy is Strategy.LONGEST_IDLE:
        # Never on a call counts as idle the longest; ties keep the flow's order.
        return sorted(
            by_position,
            key=lambda c: (
                c.last_call_ended_at is not None,
                c.last_call_ended_at or datetime.min,
                c.position,
            ),
        )
    return by_position


def plan_attempts(
    strategy: Strategy,
    candidates: list[Candidate],
    *,
    tried: frozenset[str],
    now: datetime,
    last_offered: str | None = None,
) -> Plan:
    """Who to offer the call to next, over a snapshot of candidates.

    `tried` holds the keys already offered this routing pass; they are left out. Skipped
    candidates (busy, OFF, unverified, cooling down) are reported with their reason."""
    ordered: list[Candidate] = []
    skipped: list[tuple[Candidate, SkipReason]] = []
    for c in order_by_strategy(strategy, dedupe(candidates), last_offered):
        if c.key in tried:
            continue
        reason = skip_reason(c, now)
        if reason is None:
            ordered.append(c)
        else:
            skipped.append((c, reason))
    return Plan(tuple(ordered), strategy is Strategy.SIMULTANEOUS, tuple(skipped))


# -- dynamic URL answers -------------------------------------------------------------------


class DynamicResponseInvalid(ValueError):
    """The dynamic URL answered something we cannot route with."""


@dataclass(frozen=True, slots=True)
class DynamicTarget:
    contact_uri: str
    state_management: bool | None = None
    """None: not said; a registered user's device is state-managed regardless."""


@dataclass(frozen=True, slots=True)
class DynamicRoute:
    targets: tuple[DynamicTarget, ...]
    record: bool | None = None
    recording_channels: RecordingChannels | None = None
    max_ringing_duration_s: int | None = None
    max_conversation_duration_s: int | None = None
    fetch_after_attempt: bool = False
    parallel: bool = False
    """`parallel_ringing.activate`: ring every target at once."""


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def _seconds(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        # ASCII only ('²'.isdigit() is true); float() reads 5,000 digits as inf, out of range.
        value = float(value.strip())
    if isinstance(value, int | float) and low <= value <= high:
        return int(value)
    return None


def _target(raw: Any, region: str, *, allow_sip: bool) -> DynamicTarget | None:
    uri: Any
    state: bool | None = None
    if isinstance(raw, dict):
        uri = raw.get("contact_uri")
        state = _flag(raw.get("state_management"))
    else:
        uri = raw
    if not isinstance(uri, str | int) or isinstance(uri, bool):
        return None
    try:
        contact = normalise(str(uri), region)
    except InvalidContactUri:
        return None
    if contact.type is UriType.SIP and not allow_sip:
        return None
    return DynamicTarget(contact.uri, state)


def parse_dynamic_response(data: Any, region: str) -> DynamicRoute:
    """Read `{"destination": {"numbers": [...]}, ...}`, `{"destination": [{contact_uri}...]}`
    or a bare `[{"contact_uri", "state_management"}, ...]`. Invalid numbers are dropped; the
    `numbers` form drops `sip:` values, as Exotel does. An empty list is a valid answer."""
    options: dict[str, Any] = {}
    raw_targets: list[Any]
    allow_sip = True
    if isinstance(data, list):
        raw_targets = data
    elif isinstance(data, dict):
        options = data
        destination = data.get("destination")
        if isinstance(destination, dict):
            numbers = destination.get("numbers", [])
            if not isinstance(numbers, list):
                raise DynamicResponseInvalid("destination.numbers must be a list")
            raw_targets, allow_sip = numbers, False
        elif isinstance(destination, list):
            raw_targets = destination
        elif destination is None:
            raw_targets = []
        else:
            raise DynamicResponseInvalid("destination must be an object or a list")
    else:
        raise DynamicResponseInvalid("answer must be a JSON object or list")
    targets: list[DynamicTarget] = []
    for raw in raw_targets[: MAX_DYNAMIC_TARGETS * 2]:
        target = _target(raw, region, allow_sip=allow_sip)
        if target is not None and all(t.contact_uri != target.contact_uri for t in targets):
            targets.append(target)
    channels_raw = options.get("recording_channels")
    parallel = options.get("parallel_ringing")
    return DynamicRoute(
        targets=tuple(targets[:MAX_DYNAMIC_TARGETS]),
        record=_flag(options.get("record")),
        recording_channels=(
            RecordingChannels(channels_raw) if channels_raw in ("single", "dual") else None
        ),
        max_ringing_duration_s=_seconds(options.get("max_ringing_duration"), 1, 600),
        max_conversation_duration_s=_seconds(options.get("max_conversation_duration"), 1, 14400),
        fetch_after_attempt=bool(_flag(options.get("fetch_after_attempt"))),
        parallel=isinstance(parallel, dict) and bool(_flag(parallel.get("activate"))),
    )
