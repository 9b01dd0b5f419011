"""HTTP Basic authentication of API key/token, and the per-account rate limit."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from callbridge.api.auth_throttle import AuthThrottle, ThrottlePolicy, address_key
from callbridge.errors import AccountNotFound, AuthenticationFailed, TooManyRequests
from callbridge.store import accounts as account_store
from callbridge.store.accounts import Account
from callbridge.store.repo import Store

CACHE_TTL_S = 60.0
"""A verified credential is trusted from memory this long, so the slow hash runs rarely."""

_DUMMY_HASH = account_store.unmatchable_token_hash()
"""What an unknown key's token is checked against: the same PBKDF2 work, never a match."""


@dataclass(slots=True)
class _CacheEntry:
    account: Account
    token_digest: bytes
    expires_at: float


def parse_basic(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    key, sep, token = decoded.partition(":")
    if not sep or not key or "\x00" in decoded:
        # A NUL cannot be in any stored key, and PostgreSQL refuses to compare text with one.
        return None
    return key, token


class Authenticator:
    """Verifies credentials against the stored PBKDF2 hash, caching successes briefly, and
    throttles failures per client address and per key (see `auth_throttle`).

    Every failure costs the same hash work, whether the key is unknown, known with a wrong
    token, or cached with a wrong token, so timing does not tell which keys exist."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: ThrottlePolicy | None = None,
    ) -> None:
        self._store = store
        self._now = clock
        self._cache: dict[str, _CacheEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._key_of_sid: dict[str, str] = {}
        self.throttle = AuthThrottle(policy, clock=clock)

    def forget(self, api_key: str | None = None) -> None:
        if api_key is None:
            self._cache.clear()
        else:
            self._cache.pop(api_key, None)

    async def authenticate(self, header: str | None, client: str | None = None) -> Account:
        """The account of the Basic credentials in `header`, sent from address `client`."""
        return await self._authenticate(parse_basic(header), address_key(client))

    async def _authenticate(self, credentials: tuple[str, str] | None, address: str) -> Account:
        self.throttle.check(address, credentials[0] if credentials else None)
        if credentials is None:
            self.throttle.failed(address, None)
            raise AuthenticationFailed("missing or malformed Basic credentials")
        api_key, token = credentials
        digest = hashlib.sha256(token.encode()).digest()
        account = self._cached(api_key, digest)
        if account is not None:
            self.throttle.succeeded(address, api_key)
            return account
        # A wrong token for a cached key falls through to the full check: every failure costs
        # one PBKDF2, so a fast 401 cannot tell an attacker that a key is in use.
        # One slow verification per key at a time, off the event loop; concurrent requests
        # with the same key wait for it and then hit the cache.
        lock = self._locks.setdefault(api_key, asyncio.Lock())
        async with lock:
            account = self._cached(api_key, digest)
            if account is None:
                exists, account = await self._verify(api_key, token)
                if account is None:
                    # Only existing keys are counted: random keys would just fill the table.
                    self.throttle.failed(address, api_key if exists else None)
                    raise AuthenticationFailed()
                self._cache[api_key] = _CacheEntry(account, digest, self._now() + CACHE_TTL_S)
        if len(self._locks) > 10_000:
            self._locks.clear()
        self.throttle.succeeded(address, api_key)
        return account

    async def account_for_v1_path(
        self, header: str | None, sid: str, client: str | None = None
    ) -> Account:
        """`account_for_path`, also taking Exotel's older scheme for v1: Basic with the
        account sid in place of the API key (what the `exotel` SDK sends)."""
        credentials = parse_basic(header)
        if credentials is not None and credentials[0] == sid:
            credentials = (await self._key_of(sid, credentials[1]), credentials[1])
        account = await self._authenticate(credentials, address_key(client))
        return _of_path(account, sid)

    async def _key_of(self, sid: str, token: str) -> str:
        """The API key of account `sid` (the sid itself when there is no such account, which
        then fails as an unknown key). Read from the database unless this sid and token
        authenticated within the cache's lifetime."""
        key = self._key_of_sid.get(sid)
        if key is not None and self._cached(key, hashlib.sha256(token.encode()).digest()):
            return key
        async with self._store.read() as conn:
            account = await account_store.get_account(conn, sid)
        if account is None:
            return sid
        self._key_of_sid[sid] = account.api_key
        return account.api_key

    def _cached(self, api_key: str, digest: bytes) -> Account | None:
        entry = self._cache.get(api_key)
        if entry is None or entry.expires_at <= self._now():
            return None
        return entry.account if hmac.compare_digest(entry.token_digest, digest) else None

    async def _verify(self, api_key: str, token: str) -> tuple[bool, Account | None]:
        """Whether the key exists, and its account when the token is right. An unknown key is
        checked against a dummy hash with the same parameters: it costs what a wrong token
        costs."""
        async with self._store.read() as conn:
            account = await account_store.get_account_by_key(conn, api_key)
        stored = account.api_token_hash if account is not None else _DUMMY_HASH
        valid = await asyncio.to_thread(account_store.verify_token, token, stored)
        return account is not None, account if valid else None

    async def account_for_path(
        self, header: str | None, sid: str, client: str | None = None
    ) -> Account:
        """Authenticate, then require the path's account sid to be the credential's."""
        return _of_path(await self.authenticate(header, client), sid)


def _of_path(account: Account, sid: str) -> Account:
    if account.sid != sid:
        raise AccountNotFound(f"account {sid[:64]} not found for these credentials")
    return account


class RateLimiter:
    """A token bucket per account: `limit` requests per minute, refilled continuously."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, account_sid: str, limit_per_minute: int) -> None:
        if limit_per_minute <= 0:
            return
        now = time.monotonic()
        rate = limit_per_minute / 60.0
        tokens, last = self._buckets.get(account_sid, (float(limit_per_minute), now))
        tokens = min(float(limit_per_minute), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[account_sid] = (tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / rate))
            raise TooManyRequests(
                retry_after, f"rate limit of {limit_per_minute} requests per minute exceeded"
            )
        self._buckets[account_sid] = (tokens - 1.0, now)
