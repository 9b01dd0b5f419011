"""Standard Webhooks signing: `whsec_` secrets, `v1,<base64 HMAC-SHA256>` of `id.timestamp.body`.

During a secret rotation a request is signed with every given secret (space-separated), so a
receiver holding either the new or the old secret accepts it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300


class InvalidSecret(ValueError):
    """A webhook secret that is not `whsec_<base64>`; the message never contains the secret."""


def new_secret(nbytes: int = 32) -> str:
    """A fresh random secret, `whsec_` + base64 of `nbytes` random bytes."""
    if not 24 <= nbytes <= 64:
        raise ValueError("a webhook secret has 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key bytes of a `whsec_` secret."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("webhook secret is not valid base64 after the whsec_ prefix") from None
    if not key:
        raise InvalidSecret("webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _as_list(secrets: str | Sequence[str]) -> list[str]:
    return [secrets] if isinstance(secrets, str) else [s for s in secrets if s]


def sign(secrets: str | Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: one `v1,<sig>` per secret, space-separated."""
    keys = [secret_key(s) for s in _as_list(secrets)]
    if not keys:
        raise InvalidSecret("no webhook secret to sign with")
    return " ".join(
        f"{SIGNATURE_VERSION},{_signature(key, msg_id, timestamp, body)}" for key in keys
    )


def signature_headers(
    secrets: str | Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` for one request."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
    }


def verify(
    secrets: str | Sequence[str],
    msg_id: str,
    timestamp: int,
    body: bytes,
    signature_header: str,
    *,
    now: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when any `v1` signature in the header matches any secret and the timestamp is fresh."""
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = [
        base64.b64decode(_signature(secret_key(s), msg_id, timestamp, body))
        for s in _as_list(secrets)
    ]
    for item in signature_header.split():
        version, _, value = item.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if any(hmac.compare_digest(given, e) for e in expected):
            return True
    return False
