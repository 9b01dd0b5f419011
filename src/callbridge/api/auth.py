"""HTTP Basic authentication of API key/token, and the per-account rate limit."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from callbridge.errors import AccountNotFound, AuthenticationFailed, TooManyRequests
from callbridge.store import accounts as account_store
from callbridge.store.accounts import Account
from callbridge.store.repo import Store

CACHE_TTL_S = 60.0
"""A verified credential is trusted from memory this long, so the slow hash runs rarely."""


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
    if not sep or not key:
        return None
    return key, token


class Authenticator:
    """Verifies credentials against the stored PBKDF2 hash, caching successes briefly."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, _CacheEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def forget(self, api_key: str | None = None) -> None:
        if api_key is None:
            self._cache.clear()
        else:
            self._cache.pop(api_key, None)

    async def authenticate(self, header: str | None) -> Account:
        credentials = parse_basic(header)
        if credentials is None:
            raise AuthenticationFailed("missing or malformed Basic credentials")
        api_key, token = credentials
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        entry = self._cache.get(api_key)
        if entry is not None and entry.expires_at > now:
            if hmac.compare_digest(entry.token_digest, digest):
                return entry.account
            raise AuthenticationFailed()
        # One slow verification per key at a time, off the event loop; concurrent requests
        # with the same key wait for it and then hit the cache.
        lock = self._locks.setdefault(api_key, asyncio.Lock())
        async with lock:
            entry = self._cache.get(api_key)
            if entry is not None and entry.expires_at > time.monotonic():
                if hmac.compare_digest(entry.token_digest, digest):
                    return entry.account
                raise AuthenticationFailed()
            async with self._store.read() as conn:
                account = await account_store.get_account_by_key(conn, api_key)
            if account is None or not await asyncio.to_thread(
                account_store.verify_token, token, account.api_token_hash
            ):
                raise AuthenticationFailed()
            self._cache[api_key] = _CacheEntry(account, digest, time.monotonic() + CACHE_TTL_S)
        if len(self._locks) > 10_000:
            self._locks.clear()
        return account

    async def account_for_v1_path(self, header: str | None, sid: str) -> Account:
        """`account_for_path`, also taking Exotel's older scheme for v1: Basic with the
        account sid in place of the API key (what the `exotel` SDK sends)."""
        credentials = parse_basic(header)
        if credentials is not None and credentials[0] == sid:
            async with self._store.read() as conn:
                account = await account_store.get_account(conn, sid)
            if account is not None:
                raw = f"{account.api_key}:{credentials[1]}".encode()
                header = "Basic " + base64.b64encode(raw).decode()
        return await self.account_for_path(header, sid)

    async def account_for_path(self, header: str | None, sid: str) -> Account:
        """Authenticate, then require the path's account sid to be the credential's."""
        account = await self.authenticate(header)
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
