"""The status-callback retry policy: the backoff schedule, Retry-After, and what a response means.

Pure functions; the worker feeds them attempt numbers, an RNG and the wall-clock `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Protocol

RETRY_DELAYS_S: tuple[float, ...] = (
    0.0,  # attempt 1: immediately
    2.0,
    10.0,
    60.0,
    300.0,
    1800.0,
    7200.0,
    21600.0,
    43200.0,
    86400.0,  # attempt 10: a day after attempt 9
)
"""`RETRY_DELAYS_S[n]` is the wait before attempt n+1 (0-based n); its length is the budget."""

MAX_ATTEMPTS = len(RETRY_DELAYS_S)
JITTER = 0.10
RETRY_AFTER_CAP_S = 6 * 3600.0
"""A receiver may ask us to wait longer than the schedule, but never more than this."""


class Verdict(StrEnum):
    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # connect error, timeout, 408, 429, 5xx
    FAIL = "fail"  # 3xx (never followed), other 4xx, unsafe URL: final
    GONE = "gone"  # 410: stop sending this call's events to this URL


class FailureKind(StrEnum):
    """Why an attempt produced no HTTP status."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    NETWORK = "network"  # the connection broke mid-exchange, or DNS failed
    UNSAFE_URL = "unsafe_url"


class Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def classify_status(status_code: int) -> Verdict:
    if 200 <= status_code < 300:
        return Verdict.DELIVERED
    if status_code == 410:
        return Verdict.GONE
    if status_code in (408, 429) or 500 <= status_code < 600:
        return Verdict.RETRY
    return Verdict.FAIL


def classify(status_code: int | None, failure: FailureKind | None) -> Verdict:
    """The verdict for one attempt: an HTTP status, or the kind of failure that prevented one."""
    if status_code is not None:
        return classify_status(status_code)
    if failure is FailureKind.UNSAFE_URL:
        return Verdict.FAIL
    return Verdict.RETRY


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        # float(), not int(): a 5,000-digit value is inf (capped later), not a ValueError.
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_delay(attempt: int, rng: Uniform, retry_after_s: float | None = None) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based); None when none are left.

    The schedule step gets ±10 % jitter; a Retry-After longer than that step is honoured, up to
    RETRY_AFTER_CAP_S. A Retry-After shorter than the step never makes us retry sooner.
    """
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    if attempt >= MAX_ATTEMPTS:
        return None
    delay = RETRY_DELAYS_S[attempt] * rng.uniform(1.0 - JITTER, 1.0 + JITTER)
    if retry_after_s is not None and retry_after_s > delay:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay
