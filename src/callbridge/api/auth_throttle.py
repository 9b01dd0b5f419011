"""Throttling of failed authentication, per client address and per API key.

Each address, and each existing API key, may fail `max_failures` times in a window of
`window_s` seconds that opens at its first failure; past that, its requests answer 429/10724
until the window closes (`Retry-After` says when), whatever credentials they carry. Windows
are bounded, so no one is locked out for longer than one window per burst of failures.

A key's throttle cannot be turned against its owner: addresses that authenticated with the key
recently (`known_good_s`) are not held back by the key's window, only by their own address's.
Both tables are bounded in size; the oldest entries go first.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from callbridge.errors import TooManyRequests


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    window_s: float = 60.0
    max_failures_per_address: int = 100
    max_failures_per_key: int = 200
    known_good_s: float = 24 * 3600.0
    max_entries: int = 10_000
    """Per table (addresses, keys, known-good pairs)."""


class _Windows:
    """Failure counts in fixed windows, by name, in a bounded LRU table."""

    def __init__(self, limit: int, window_s: float, max_entries: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_entries = max_entries
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def blocked_for(self, name: str, now: float) -> float | None:
        """Seconds until `name` may try again, or None when it may try now."""
        found = self._windows.get(name)
        if found is None:
            return None
        opened, failures = found
        remaining = opened + self.window_s - now
        if remaining <= 0:
            del self._windows[name]
            return None
        return remaining if failures >= self.limit else None

    def failed(self, name: str, now: float) -> None:
        opened, failures = self._windows.get(name, (now, 0))
        if opened + self.window_s <= now:
            opened, failures = now, 0
        self._windows[name] = (opened, failures + 1)
        self._windows.move_to_end(name)
        while len(self._windows) > self.max_entries:
            self._windows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._windows)


@lru_cache(maxsize=4096)
def address_key(host: str | None) -> str:
    """What an address is counted as: IPv6 clients by their /64, as one host usually holds a
    whole /64 and could otherwise rotate through it."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)


class AuthThrottle:
    """Decides whether an authentication attempt may run, and learns from its outcome."""

    def __init__(self, policy: ThrottlePolicy | None = None, *, clock: Callable[[], float]) -> None:
        self.policy = policy or ThrottlePolicy()
        self._now = clock
        p = self.policy
        self._addresses = _Windows(p.max_failures_per_address, p.window_s, p.max_entries)
        self._keys = _Windows(p.max_failures_per_key, p.window_s, p.max_entries)
        self._known_good: OrderedDict[tuple[str, str], float] = OrderedDict()

    def check(self, address: str, api_key: str | None) -> None:
        """Raise 429 when the address, or the key from an address it does not know, is held."""
        now = self._now()
        wait = self._addresses.blocked_for(address, now)
        if wait is not None:
            raise _too_many(wait, "from this address")
        if api_key is None:
            return
        wait = self._keys.blocked_for(api_key, now)
        if wait is not None and not self._is_known_good(api_key, address, now):
            raise _too_many(wait, "for this API key")

    def failed(self, address: str, api_key: str | None) -> None:
        """Count a failure against the address and, for a key that exists, the key."""
        now = self._now()
        self._addresses.failed(address, now)
        if api_key is not None:
            self._keys.failed(api_key, now)

    def succeeded(self, address: str, api_key: str) -> None:
        pair = (api_key, address)
        now = self._now()
        until = self._known_good.get(pair)
        if until is not None and until - now > self.policy.known_good_s / 2:
            return  # fresh enough: the hot path does no bookkeeping
        self._known_good[pair] = now + self.policy.known_good_s
        self._known_good.move_to_end(pair)
        while len(self._known_good) > self.policy.max_entries:
            self._known_good.popitem(last=False)

    def _is_known_good(self, api_key: str, address: str, now: float) -> bool:
        until = self._known_good.get((api_key, address))
        return until is not None and until > now

    @property
    def tracked(self) -> tuple[int, int, int]:
        """Sizes of the address, key and known-good tables."""
        return len(self._addresses), len(self._keys), len(self._known_good)


def _too_many(wait_s: float, scope: str) -> TooManyRequests:
    retry_after = max(1, math.ceil(wait_s))
    return TooManyRequests(
        retry_after,
        f"too many failed authentication attempts {scope}; retry after {retry_after} s",
    )
