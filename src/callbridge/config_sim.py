"""The config file's `[[sim.numbers]]`: behaviours of simulated phones set at every start.

The same keys as the sim control API's `PUT /sim/v1/numbers/{contact_uri}` body, checked as
strictly as the rest of the file; the control API changes them at run time and
`DELETE /sim/v1/numbers` resets them until the next start.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from callbridge.numbers import InvalidContactUri, normalise
from callbridge.telephony.sim import Behaviour, Outcome, SimulatedCarrier

SIM_KEYS = {"numbers"}
NUMBER_KEYS = {"contact_uri", "outcome", "answer_after", "hangup_after", "dtmf"}
MAX_DELAY_S = 24 * 3600
MAX_NUMBERS = 10_000
_DTMF = re.compile(r"^[0-9*#A-Da-d]{1,64}$")


class SimConfigError(ValueError):
    """An invalid `sim` table; the message names the key."""


@dataclass(frozen=True)
class SimNumberConfig:
    contact_uri: str
    behaviour: Behaviour


def parse_sim(raw: Any) -> tuple[SimNumberConfig, ...]:
    """The `sim` table of the file (absent: no behaviours)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SimConfigError("sim must be a table")
    for key in raw:
        if key not in SIM_KEYS:
            raise SimConfigError(f"unknown config key sim.{key}")
    numbers = raw.get("numbers", [])
    if not isinstance(numbers, list):
        raise SimConfigError("sim.numbers must be an array of tables")
    if len(numbers) > MAX_NUMBERS:
        raise SimConfigError(f"sim.numbers has more than {MAX_NUMBERS} entries")
    found: dict[str, str] = {}
    parsed: list[SimNumberConfig] = []
    for i, table in enumerate(numbers):
        where = f"sim.numbers[{i}]"
        number = _parse_number(table, where)
        first = found.setdefault(number.contact_uri, where)
        if first != where:
            raise SimConfigError(f"{where}.contact_uri duplicates {first} ({number.contact_uri})")
        parsed.append(number)
    return tuple(parsed)


def _parse_number(table: Any, where: str) -> SimNumberConfig:
    if not isinstance(table, dict):
        raise SimConfigError(f"{where} must be a table")
    for key in table:
        if key not in NUMBER_KEYS:
            raise SimConfigError(f"unknown config key sim.numbers.{key}")
    raw_uri = table.get("contact_uri")
    if not isinstance(raw_uri, str):
        raise SimConfigError(f"{where}.contact_uri is required (a string)")
    try:
        uri = normalise(raw_uri).uri
    except InvalidContactUri as exc:
        raise SimConfigError(f"{where}.contact_uri: {exc}") from exc
    outcome = table.get("outcome", Outcome.ANSWER.value)
    if outcome not in {o.value for o in Outcome}:
        allowed = ", ".join(o.value for o in Outcome)
        raise SimConfigError(f"{where}.outcome must be one of: {allowed}")
    dtmf = table.get("dtmf")
    if dtmf is not None and (not isinstance(dtmf, str) or not _DTMF.match(dtmf)):
        raise SimConfigError(f"{where}.dtmf must be 1 to 64 of the keys 0-9 * # A-D")
    behaviour = Behaviour(
        outcome=Outcome(outcome),
        answer_after_s=_seconds(table, "answer_after", where, default=1.0),
        hangup_after_s=_seconds(table, "hangup_after", where, default=None),
        dtmf=dtmf,
    )
    return SimNumberConfig(uri, behaviour)


def _seconds(table: dict[str, Any], key: str, where: str, *, default: float | None) -> Any:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise SimConfigError(f"{where}.{key} must be a number of seconds")
    if not 0 <= value <= MAX_DELAY_S:
        raise SimConfigError(f"{where}.{key} must be from 0 to {MAX_DELAY_S} seconds")
    return float(value)


def apply_sim_numbers(sim: SimulatedCarrier, numbers: Iterable[SimNumberConfig]) -> int:
    """Set each behaviour on the carrier; returns how many were set."""
    count = 0
    for number in numbers:
        sim.set_behaviour(number.contact_uri, number.behaviour)
        count += 1
    return count
