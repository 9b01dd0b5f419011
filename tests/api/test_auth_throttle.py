"""Online guessing: failed authentication is throttled per client address and per API key
(429/10724 with Retry-After, for one bounded window), every failure costs the same hash work
whether the key exists or not, and successful requests stay on the fast cached path."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from callbridge.api.auth_throttle import AuthThrottle, ThrottlePolicy, address_key
from callbridge.clock import ManualClock
from callbridge.errors import TooManyRequests
from callbridge.settings import Settings
from callbridge.store import accounts as account_store
from callbridge.store.repo import Store

from ..conftest import basic
from ..harness import ACCOUNT, KEY, TOKEN, Harness, running_app

CALLS = f"/v3/accounts/{ACCOUNT}/calls?limit=1"
WRONG = basic(KEY, "not-the-token")
GOOD = basic(KEY, TOKEN)
PER_ADDRESS = Settings().auth_max_failures_per_address
PER_KEY = Settings().auth_max_failures_per_key
ADDRESSES = 5
"""Addresses that share the guessing of one key, each staying under its own limit."""


@pytest.fixture
async def app(store: Store, clock: ManualClock) -> AsyncIterator[Harness]:
    async with running_app(store, clock) as harness:
        yield harness


def error_code(r: httpx.Response) -> int:
    code: int = r.json()["response"]["error_data"]["code"]
    return code


async def test_an_address_that_keeps_failing_gets_429_until_its_window_closes(
    app: Harness,
) -> None:
    async with app.client_at("203.0.113.7") as guesser:
        for _ in range(PER_ADDRESS):
            r = await guesser.get(CALLS, headers=WRONG)
            assert r.status_code == 401
        r = await guesser.get(CALLS, headers=WRONG)
        assert r.status_code == 429
        assert error_code(r) == 10724
        assert r.headers["Retry-After"] == "60"
        assert "this address" in r.json()["response"]["error_data"]["message"]
        # Held whatever it sends, even the right token, and no slower for it.
        r = await guesser.get(CALLS, headers=GOOD)
        assert r.status_code == 429
        await app.clock.advance(45)
        r = await guesser.get(CALLS, headers=GOOD)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "15"
        # Other addresses are not held back: one address alone never reaches the key's limit.
        assert PER_KEY > PER_ADDRESS + 1
        assert (await app.client.get(CALLS, headers=GOOD)).status_code == 200
        await app.clock.advance(15)
        r = await guesser.get(CALLS, headers=GOOD)
        assert r.status_code == 200, r.text


async def test_missing_or_malformed_credentials_count_as_failures(app: Harness) -> None:
    async with app.client_at("203.0.113.8") as scanner:
        for i in range(PER_ADDRESS):
            headers = {} if i % 2 else {"Authorization": "Basic !!!"}
            assert (await scanner.get(CALLS, headers=headers)).status_code == 401
        assert (await scanner.get(CALLS)).status_code == 429


async def test_a_success_in_between_does_not_reset_an_addresses_failures(app: Harness) -> None:
    """Otherwise one valid account would let its owner guess at every other key forever."""
    async with app.client_at("203.0.113.9") as guesser:
        for _ in range(PER_ADDRESS - 1):
            assert (await guesser.get(CALLS, headers=WRONG)).status_code == 401
        assert (await guesser.get(CALLS, headers=GOOD)).status_code == 200
        assert (await guesser.get(CALLS, headers=WRONG)).status_code == 401
        assert (await guesser.get(CALLS, headers=GOOD)).status_code == 429


async def test_a_key_guessed_from_many_addresses_is_held_except_where_it_is_known(
    app: Harness,
) -> None:
    async with app.client_at("198.51.100.1") as owner:
        assert (await owner.get(CALLS, headers=GOOD)).status_code == 200
    assert PER_KEY // ADDRESSES < PER_ADDRESS
    for n in range(ADDRESSES):  # together they reach the key's limit; no address reaches its own
        async with app.client_at(f"192.0.2.{n + 1}") as guesser:
            for _ in range(PER_KEY // ADDRESSES):
                assert (await guesser.get(CALLS, headers=WRONG)).status_code == 401
    async with app.client_at("192.0.2.99") as guesser:
        r = await guesser.get(CALLS, headers=WRONG)
        assert r.status_code == 429
        assert "this API key" in r.json()["response"]["error_data"]["message"]
        assert (await guesser.get(CALLS, headers=GOOD)).status_code == 429
    # The owner's address authenticated with the key before: the key's window does not hold it.
    async with app.client_at("198.51.100.1") as owner:
        assert (await owner.get(CALLS, headers=GOOD)).status_code == 200
    # The other account's key is not held either.
    other = basic("k_other", "t_other")
    async with app.client_at("192.0.2.99") as guesser:
        assert (await guesser.get("/v3/accounts/other/calls", headers=other)).status_code == 200
        await app.clock.advance(60)
        assert (await guesser.get(CALLS, headers=GOOD)).status_code == 200


def test_throttle_tables_stay_bounded_and_windows_end() -> None:
    now = [0.0]
    throttle = AuthThrottle(
        ThrottlePolicy(max_failures_per_address=2, max_entries=100), clock=lambda: now[0]
    )
    for n in range(1000):
        address = f"10.0.{n // 256}.{n % 256}"
        throttle.failed(address, "k")
        throttle.succeeded(address, f"key{n}")
    addresses, keys, known = throttle.tracked
    assert (addresses, keys, known) == (100, 1, 100)
    throttle.failed("10.9.9.9", None)
    throttle.failed("10.9.9.9", None)
    with pytest.raises(TooManyRequests, match="retry after 60 s"):
        throttle.check("10.9.9.9", None)
    now[0] = 60.0
    throttle.check("10.9.9.9", None)


def test_ipv6_clients_are_counted_by_their_64_prefix() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key(None) == "unknown"


async def test_unknown_keys_cost_the_same_hash_work_as_wrong_tokens(
    store: Store, clock: ManualClock
) -> None:
    """Medians over interleaved requests: an unknown key, a known key with a wrong token and a
    cached key with a wrong token each take about one PBKDF2; a right token is cached."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            allow_private_urls=True,
            log_level="WARNING",
            data_dir=Path(data_dir),
            auth_max_failures_per_address=10_000,
            auth_max_failures_per_key=10_000,
        )
        async with running_app(store, clock, settings=settings) as app:
            stored = account_store.hash_token("x")
            started = time.perf_counter()
            for _ in range(3):
                account_store.verify_token("y", stored)
            one_hash_s = (time.perf_counter() - started) / 3
            samples: dict[str, list[float]] = {"unknown": [], "wrong": [], "right": []}
            headers = {
                "unknown": basic("k_nobody", "not-the-token"),
                "wrong": WRONG,
                "right": GOOD,
            }
            assert (await app.client.get(CALLS, headers=GOOD)).status_code == 200  # cached now
            for _ in range(9):
                for kind, auth in headers.items():
                    started = time.perf_counter()
                    r = await app.client.get(CALLS, headers=auth)
                    samples[kind].append(time.perf_counter() - started)
                    assert r.status_code == (200 if kind == "right" else 401)
    unknown, wrong, right = (statistics.median(samples[k]) for k in ("unknown", "wrong", "right"))
    assert 0.6 < unknown / wrong < 1.67, (unknown, wrong)
    assert unknown > 0.5 * one_hash_s, (unknown, one_hash_s)
    assert right < 0.5 * wrong, (right, wrong)
