"""Callback payloads and their JSON, multipart and query-string encodings, parsed back."""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

from callbridge.domain.callbacks import (
    build_payload,
    encode_multipart,
    encode_request,
    flatten_fields,
)
from callbridge.domain.options import CallbackContentType, CallbackEvent, CallbackMethod

DETAILS: dict[str, Any] = {
    "sid": "a" * 32,
    "status": "completed",
    "duration": 42,
    "recordings": [{"url": "https://x.example/r.mp3", "channels": "single"}],
    "legs": {"from": {"status": "completed"}, "to": None},
    "custom_field": "ünïcode ✓",
}


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    assert message.is_multipart()
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        fields[name] = payload.decode("utf-8")
    return fields


def test_payload_has_event_details_and_call_details() -> None:
    payload = build_payload(CallbackEvent.TERMINAL, DETAILS)
    assert payload == {"event_details": {"event_type": "terminal"}, "call_details": DETAILS}


def test_payload_is_a_deep_copy_of_the_details() -> None:
    details = {"legs": [{"status": "ringing"}]}
    payload = build_payload("answered", details)
    details["legs"][0]["status"] = "changed"
    assert payload["call_details"]["legs"][0]["status"] == "ringing"


def test_payload_rejects_unknown_event_type() -> None:
    with pytest.raises(ValueError):
        build_payload("ringing", {})


def test_json_post_body_is_the_payload() -> None:
    payload = build_payload("answered", DETAILS)
    body, content_type, params = encode_request(
        payload, CallbackMethod.POST, CallbackContentType.JSON
    )
    assert content_type == "application/json"
    assert params == {}
    assert json.loads(body) == payload


def test_multipart_post_has_one_field_per_top_level_key_with_nested_json() -> None:
    payload = build_payload("terminal", DETAILS)
    body, content_type, params = encode_request(payload, "POST", "multipart/form-data")
    assert content_type is not None and content_type.startswith("multipart/form-data; boundary=")
    assert params == {}
    fields = parse_multipart(body, content_type)
    assert set(fields) == {"event_details", "call_details"}
    assert json.loads(fields["event_details"]) == {"event_type": "terminal"}
    assert json.loads(fields["call_details"]) == DETAILS


def test_multipart_encoding_is_deterministic() -> None:
    payload = build_payload("terminal", DETAILS)
    first = encode_request(payload, "POST", "multipart/form-data")
    assert encode_request(payload, "POST", "multipart/form-data") == first


def test_multipart_boundary_never_occurs_in_a_value() -> None:
    fields = {"a": "x"}
    _, header = encode_multipart(fields)
    boundary = header.split("boundary=")[1]
    hostile = {"a": f"--{boundary}\r\nsneaky", "b": boundary}
    body, header2 = encode_multipart(hostile)
    assert parse_multipart(body, header2) == hostile


def test_multipart_field_names_are_escaped() -> None:
    body, header = encode_multipart({'we"ird\r\nname': "v"})
    assert b'name="we%22ird%0D%0Aname"' in body
    assert parse_multipart(body, header) == {"we%22ird%0D%0Aname": "v"}


def test_get_has_no_body_and_the_same_fields_as_query_params() -> None:
    payload = build_payload("answered", DETAILS)
    body, content_type, params = encode_request(payload, CallbackMethod.GET, "application/json")
    assert body == b""
    assert content_type is None
    parsed = parse_qs(urlencode(params))
    assert json.loads(parsed["event_details"][0]) == {"event_type": "answered"}
    assert json.loads(parsed["call_details"][0]) == DETAILS


def test_flatten_keeps_strings_and_json_encodes_other_values() -> None:
    fields = flatten_fields({"s": "text", "n": 3, "b": True, "none": None, "o": {"k": [1]}})
    assert fields == {"s": "text", "n": "3", "b": "true", "none": "", "o": '{"k":[1]}'}
