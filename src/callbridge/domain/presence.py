"""Which error, if any, stops a call to a device: SPEC §2.2's checks in SPEC's order."""

from __future__ import annotations

from dataclasses import dataclass

from callbridge.errors import (
    CallbridgeError,
    DeviceBusy,
    DeviceTurnedOff,
    DeviceUnreachable,
    DeviceUnverified,
)


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    available: bool
    verified: bool
    reachable: bool
    """False for a `sip:` device with no live registration."""
    busy: bool


def device_refusal(device: DeviceSnapshot) -> CallbridgeError | None:
    """OFF → 10703, unreachable → 1012, unverified → 10705, busy → 10706, else None.

    The busy check here is advisory (for listings and routing); the authoritative busy
    check is the compare-and-set insert of the busy mark."""
    if not device.available:
        return DeviceTurnedOff()
    if not device.reachable:
        return DeviceUnreachable()
    if not device.verified:
        return DeviceUnverified()
    if device.busy:
        return DeviceBusy()
    return None
