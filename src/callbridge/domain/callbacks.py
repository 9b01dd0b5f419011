"""Exotel status-callback payloads and their wire encodings (JSON, multipart form, query string).

Pure functions: no I/O. The payload is `{"event_details": {...}, "call_details": {...}}`; form and
query encodings flatten it one level, JSON-encoding each nested value per top-level key.

Calls made through Exotel's v1 API send v1's flat document instead (`CallSid`, `Status`, `Legs`…,
see `domain/v1_views.py`); its form and query encodings name nested values with brackets, as
HTML forms do (`Legs[0][Status]=completed`), so form parsers rebuild them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from callbridge.domain.options import CallbackContentType, CallbackEvent, CallbackMethod

_JSON_SEPARATORS = (",", ":")


class EncodedRequest(NamedTuple):
    """What to put on the wire: body bytes, the Content-Type header (None for GET), query params."""

    body: bytes
    content_type: str | None
    params: dict[str, str]


class FlatFields(dict[str, Any]):
    """Call details that are the whole callback document (Exotel v1's flat fields), not wrapped
    in `{"event_details", "call_details"}`. An `EventType` key is filled with the event."""


def build_payload(
    event_type: CallbackEvent | str, call_details: Mapping[str, Any]
) -> dict[str, Any]:
    """The callback document for one event; `call_details` must be JSON-serialisable.

    The details are deep-copied through JSON so the stored payload can never alias live state.
    """
    event = CallbackEvent(event_type)
    details: dict[str, Any] = json.loads(json.dumps(dict(call_details)))
    if isinstance(call_details, FlatFields):
        if "EventType" in details:
            details["EventType"] = event.value
        return details
    return {"event_details": {"event_type": event.value}, "call_details": details}


def is_flat(payload: Mapping[str, Any]) -> bool:
    """A v1 document (stored payloads lose the FlatFields type; the shape tells them apart)."""
    return "event_details" not in payload


def bracket_fields(payload: Mapping[str, Any]) -> dict[str, str]:
    """Form fields of a flat document: nested values by path, `Legs[0][Status]`; None as ""."""
    fields: dict[str, str] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                add(f"{name}[{key}]", item)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                add(f"{name}[{index}]", item)
        elif value is None:
            fields[name] = ""
        elif isinstance(value, bool):
            fields[name] = "true" if value else "false"
        else:
            fields[name] = str(value)

    for key, value in payload.items():
        add(str(key), value)
    return fields


def form_fields(payload: Mapping[str, Any]) -> dict[str, str]:
    """The form/query fields of a payload, in the encoding its kind of document uses."""
    return bracket_fields(payload) if is_flat(payload) else flatten_fields(payload)


def flatten_fields(payload: Mapping[str, Any]) -> dict[str, str]:
    """Top-level keys as form/query fields: strings as-is, None as "", anything else as JSON."""
    fields: dict[str, str] = {}
    for key, value in payload.items():
        if isinstance(value, str):
            fields[str(key)] = value
        elif value is None:
            fields[str(key)] = ""
        else:
            fields[str(key)] = json.dumps(value, separators=_JSON_SEPARATORS, ensure_ascii=False)
    return fields


def encode_json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=_JSON_SEPARATORS, ensure_ascii=False).encode("utf-8")


def multipart_boundary(fields: Mapping[str, str]) -> str:
    """A boundary derived from the content, so the same payload always encodes to the same bytes."""
    digest = hashlib.sha256(encode_json(fields)).hexdigest()[:32]
    boundary = f"callbridge-{digest}"
    counter = 0
    while any(boundary in name or boundary in value for name, value in fields.items()):
        counter += 1
        boundary = f"callbridge-{digest}-{counter}"
    return boundary


def _quote_field_name(name: str) -> str:
    # The HTML form-data rules: escape quote and line breaks in a field name.
    return name.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


def encode_multipart(fields: Mapping[str, str], boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type header value."""
    boundary = boundary or multipart_boundary(fields)
    parts: list[bytes] = []
    for name, value in fields.items():
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{_quote_field_name(name)}"\r\n\r\n'
        )
        parts.append(head.encode("utf-8") + value.encode("utf-8") + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def encode_request(
    payload: Mapping[str, Any],
    method: CallbackMethod | str,
    content_type: CallbackContentType | str,
) -> EncodedRequest:
    """Encode a payload for `method`/`content_type`; GET ignores the content type (no body)."""
    method = CallbackMethod(method)
    content_type = CallbackContentType(content_type)
    if method is CallbackMethod.GET:
        return EncodedRequest(b"", None, form_fields(payload))
    if content_type is CallbackContentType.MULTIPART:
        body, header = encode_multipart(form_fields(payload))
        return EncodedRequest(body, header, {})
    return EncodedRequest(encode_json(payload), "application/json", {})
