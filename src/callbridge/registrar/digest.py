"""HTTP Digest for SIP (RFC 2617 / RFC 3261 §22, MD5, qop=auth): a device's stored HA1,
stateless signed nonces every node can check, and verifying a client's response."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

from callbridge.clock import Clock

DEFAULT_REALM = "callbridge"
NONCE_TTL_S = 300
"""A challenge may be answered for this long; after it, the phone is re-challenged (stale)."""


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def ha1(username: str, realm: str, password: str) -> str:
    """MD5(username:realm:password): what the store keeps instead of the password."""
    return md5_hex(f"{username}:{realm}:{password}")


class NonceCheck(StrEnum):
    OK = "ok"
    STALE = "stale"
    BAD = "bad"


class Nonces:
    """Nonces are `<issued-at hex>.<HMAC>`: any node with the same key can check one without
    shared state, so a phone's challenge and its answer may reach different nodes."""

    def __init__(self, key: bytes | None, clock: Clock, ttl_s: int = NONCE_TTL_S) -> None:
        self._key = key or secrets.token_bytes(32)
        self._clock = clock
        self._ttl_s = ttl_s

    def _mac(self, stamp: str, realm: str) -> str:
        return hmac.new(self._key, f"{stamp}:{realm}".encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, realm: str) -> str:
        stamp = format(int(self._clock.now().timestamp()), "x")
        return f"{stamp}.{self._mac(stamp, realm)}"

    def check(self, nonce: str, realm: str) -> NonceCheck:
        stamp, dot, mac = nonce.partition(".")
        if not dot or not _same(mac, self._mac(stamp, realm)):
            return NonceCheck.BAD
        try:
            issued = int(stamp, 16)
        except ValueError:
            return NonceCheck.BAD
        age = self._clock.now().timestamp() - issued
        return NonceCheck.OK if -5 <= age <= self._ttl_s else NonceCheck.STALE


def challenge(realm: str, nonce: str, *, stale: bool = False) -> str:
    """The WWW-Authenticate value of a 401."""
    value = f'Digest realm="{realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'
    return value + ", stale=true" if stale else value


def response_matches(credentials: dict[str, str], method: str, stored_ha1: str) -> bool:
    """Whether the Authorization's `response` was computed from this HA1 (qop=auth, or the
    RFC 2069 form without qop that old phones send)."""
    nonce = credentials.get("nonce", "")
    uri = credentials.get("uri", "")
    given = credentials.get("response", "").lower()
    ha2 = md5_hex(f"{method}:{uri}")
    qop = credentials.get("qop", "").lower()
    if qop == "auth":
        nc, cnonce = credentials.get("nc", ""), credentials.get("cnonce", "")
        if not nc or not cnonce:
            return False
        expected = md5_hex(f"{stored_ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    elif not qop:
        expected = md5_hex(f"{stored_ha1}:{nonce}:{ha2}")
    else:
        return False
    return _same(expected, given)


def _same(a: str, b: str) -> bool:
    """Constant-time comparison that also takes non-ASCII input (from the wire) safely."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
