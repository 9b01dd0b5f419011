"""The retry schedule, Retry-After handling and the meaning of each response."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from callbridge.webhooks.schedule import (
    MAX_ATTEMPTS,
    RETRY_AFTER_CAP_S,
    RETRY_DELAYS_S,
    FailureKind,
    Verdict,
    classify,
    classify_status,
    next_delay,
    parse_retry_after,
)

from .helpers import NoJitter

NOW = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)


def test_schedule_is_immediate_then_2s_10s_1m_5m_30m_2h_6h_12h_24h() -> None:
    assert RETRY_DELAYS_S == (0, 2, 10, 60, 300, 1800, 7200, 21600, 43200, 86400)
    assert MAX_ATTEMPTS == 10


@pytest.mark.parametrize("attempt", range(1, 10))
def test_next_delay_without_jitter_is_the_schedule_step(attempt: int) -> None:
    assert next_delay(attempt, NoJitter()) == RETRY_DELAYS_S[attempt]


def test_no_delay_after_the_last_attempt() -> None:
    assert next_delay(MAX_ATTEMPTS, NoJitter()) is None
    assert next_delay(MAX_ATTEMPTS, NoJitter(), retry_after_s=5) is None


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        next_delay(0, NoJitter())


@pytest.mark.parametrize("attempt", range(1, 10))
def test_jitter_stays_within_ten_percent(attempt: int) -> None:
    rng = random.Random(attempt)
    step = RETRY_DELAYS_S[attempt]
    delays = [next_delay(attempt, rng) for _ in range(500)]
    assert all(d is not None and step * 0.9 <= d <= step * 1.1 for d in delays)
    assert len(set(delays)) > 1


def test_longer_retry_after_is_honoured() -> None:
    assert next_delay(1, NoJitter(), retry_after_s=120) == 120


def test_shorter_retry_after_never_makes_us_retry_sooner() -> None:
    assert next_delay(3, NoJitter(), retry_after_s=1) == 60


def test_retry_after_is_capped() -> None:
    assert next_delay(1, NoJitter(), retry_after_s=10 * 86400) == RETRY_AFTER_CAP_S


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert classify_status(status) is Verdict.DELIVERED


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_and_5xx_are_retried(status: int) -> None:
    assert classify_status(status) is Verdict.RETRY


def test_410_is_gone() -> None:
    assert classify_status(410) is Verdict.GONE


@pytest.mark.parametrize("status", [100, 301, 302, 303, 307, 308, 400, 401, 403, 404, 413, 422])
def test_3xx_and_other_4xx_are_final_failures(status: int) -> None:
    assert classify_status(status) is Verdict.FAIL


@pytest.mark.parametrize(
    ("kind", "verdict"),
    [
        (FailureKind.CONNECT, Verdict.RETRY),
        (FailureKind.TIMEOUT, Verdict.RETRY),
        (FailureKind.NETWORK, Verdict.RETRY),
        (FailureKind.UNSAFE_URL, Verdict.FAIL),
        (None, Verdict.RETRY),
    ],
)
def test_failures_without_a_status(kind: FailureKind | None, verdict: Verdict) -> None:
    assert classify(None, kind) is verdict


def test_status_wins_over_failure_kind() -> None:
    assert classify(200, FailureKind.TIMEOUT) is Verdict.DELIVERED


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after(" 0 ", NOW) == 0


def test_retry_after_as_http_date() -> None:
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(when, NOW) == 90


def test_retry_after_in_the_past_is_zero() -> None:
    when = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(when, NOW) == 0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2026"])
def test_unusable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None
