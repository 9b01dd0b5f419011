"""Standard Webhooks signing, checked against the `standardwebhooks` reference library."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from callbridge.webhooks.signing import (
    InvalidSecret,
    new_secret,
    secret_key,
    sign,
    signature_headers,
    verify,
)

BODY = b'{"event_details":{"event_type":"terminal"},"call_details":{"sid":"x"}}'


def test_new_secret_is_whsec_and_32_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_secret() != secret


def test_new_secret_size_is_bounded() -> None:
    with pytest.raises(ValueError):
        new_secret(8)


def test_reference_library_verifies_our_signature() -> None:
    secret = new_secret()
    now = int(time.time())
    headers = signature_headers(secret, "evt_1", now, BODY)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) is not None


def test_reference_library_verifies_an_empty_get_body() -> None:
    secret = new_secret()
    headers = signature_headers(secret, "evt_2", int(time.time()), b"")
    Webhook(secret).verify(b"", headers, json_parse=False)


def test_during_rotation_either_secret_verifies() -> None:
    current, previous = new_secret(), new_secret()
    headers = signature_headers([current, previous], "evt_3", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(current).verify(BODY, headers)
    Webhook(previous).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_tampered_body_fails_the_reference_library() -> None:
    secret = new_secret()
    headers = signature_headers(secret, "evt_4", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"terminal", b"answered"), headers)


def test_our_verify_accepts_a_good_signature_and_rejects_bad_ones() -> None:
    secret = new_secret()
    ts = 1_760_000_000
    header = sign(secret, "evt_5", ts, BODY)
    assert verify(secret, "evt_5", ts, BODY, header, now=ts + 10)
    assert not verify(secret, "evt_5", ts, BODY + b" ", header, now=ts)
    assert not verify(secret, "evt_6", ts, BODY, header, now=ts)
    assert not verify(new_secret(), "evt_5", ts, BODY, header, now=ts)
    assert not verify(secret, "evt_5", ts, BODY, header, now=ts + 301)
    assert not verify(secret, "evt_5", ts, BODY, "v2," + header[3:], now=ts)
    assert not verify(secret, "evt_5", ts, BODY, "v1,@@@", now=ts)


def test_our_verify_matches_any_of_several_signatures() -> None:
    a, b = new_secret(), new_secret()
    header = sign([a, b], "evt_7", 100, BODY)
    assert verify(b, "evt_7", 100, BODY, header, now=100)
    assert verify([new_secret(), a], "evt_7", 100, BODY, header, now=100)


def test_invalid_secret_error_never_contains_the_secret() -> None:
    bad = "whsec_not*base64*at-all"
    with pytest.raises(InvalidSecret) as info:
        secret_key(bad)
    assert "not*base64" not in str(info.value)


def test_signing_needs_a_secret() -> None:
    with pytest.raises(InvalidSecret):
        sign([], "evt", 1, b"")
