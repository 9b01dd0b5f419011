"""Exotel's legacy API dialect (`/v1/Accounts/…`, `/v2_beta/Accounts/…`): paths in either case,
answers in XML (`<TwilioResponse>`) or, with a `.json` suffix, JSON, and errors as
`RestException` instead of the v3 envelope.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from callbridge.api.envelope import failure
from callbridge.errors import CallbridgeError

XML_MEDIA_TYPE = "application/xml; charset=utf-8"
LEGACY_PREFIXES = ("/v1/", "/v2_beta/")

_CANONICAL_SEGMENTS = {
    "accounts": "Accounts",
    "calls": "Calls",
    "calls.json": "Calls.json",
    "connect": "connect",
    "connect.json": "connect.json",
    "incomingphonenumbers": "IncomingPhoneNumbers",
    "incomingphonenumbers.json": "IncomingPhoneNumbers.json",
}
"""Segments Exotel's newer docs write in lower case (`/v1/accounts/…/calls/connect`)."""

_NOT_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ITEM_TAGS = {"Calls": "Call"}
"""The element of each item of a list, where the list's name alone does not say it."""


def is_legacy_path(path: str) -> bool:
    return path.startswith(LEGACY_PREFIXES)


def wants_json(path: str) -> bool:
    """JSON for a `.json` path and for `/v2_beta` (which only speaks JSON); otherwise XML."""
    return path.startswith("/v2_beta/") or path.rsplit("/", 1)[-1].lower().endswith(".json")


def canonical_path(path: str) -> str:
    """`/v1/accounts/acme/calls/connect.json` → `/v1/Accounts/acme/Calls/connect.json`.

    Only the fixed words are rewritten: the account sid and call sids keep their case."""
    parts = path.split("/")
    if len(parts) > 1:
        parts[1] = parts[1].lower()
    # ["", "v1", "Accounts", sid, family, ...]: positions 2, 4 and 5 hold fixed words.
    for index in (2, 4, 5):
        if index < len(parts):
            parts[index] = _CANONICAL_SEGMENTS.get(parts[index].lower(), parts[index])
    return "/".join(parts)


class LegacyPathMiddleware:
    """Routes `/v1/accounts/…/calls…` (any case of the fixed words) to the canonical routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            lowered = path[:10].lower()
            if lowered.startswith(("/v1/", "/v2_beta/")):
                fixed = canonical_path(path)
                if fixed != path:
                    scope = {**scope, "path": fixed, "raw_path": fixed.encode()}
        await self.app(scope, receive, send)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    # XML 1.0 cannot carry control characters at all: they become U+FFFD, never invalid XML.
    return _NOT_XML_CHARS.sub("\ufffd", str(value))


def _append(parent: ET.Element, name: str, value: Any) -> None:
    element = ET.SubElement(parent, name)
    if isinstance(value, Mapping):
        for key, item in value.items():
            _append(element, str(key), item)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and len(item) == 1 and name not in _ITEM_TAGS:
                ((tag, inner),) = item.items()
                _append(element, str(tag), inner)
            else:
                _append(element, _ITEM_TAGS.get(name, "Item"), item)
    else:
        element.text = _text(value)


def render_xml(body: Mapping[str, Any]) -> bytes:
    """`<TwilioResponse>` holding `body`, values escaped; None renders as an empty element."""
    root = ET.Element("TwilioResponse")
    for key, value in body.items():
        _append(root, str(key), value)
    document: bytes = ET.tostring(root, encoding="unicode").encode()
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + document


def legacy_response(body: Mapping[str, Any], *, as_json: bool, status: int = 200) -> Response:
    if as_json:
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return Response(content, status_code=status, media_type="application/json")
    return Response(render_xml(body), status_code=status, media_type=XML_MEDIA_TYPE)


def legacy_error(error: CallbridgeError, *, as_json: bool) -> Response:
    """Exotel v1's error: `{"RestException": {"Status", "Message", "Code"}}` (or its XML)."""
    body = {
        "RestException": {
            "Status": error.http_status,
            "Message": error.message,
            "Code": error.code,
        }
    }
    response = legacy_response(body, as_json=as_json, status=error.http_status)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def error_response(path: str, request_id: str, method: str, error: CallbridgeError) -> Response:
    """The one place an error becomes a response: v1's shape on legacy paths, else the v3
    envelope."""
    if is_legacy_path(path):
        response = legacy_error(error, as_json=wants_json(path))
        response.headers["X-Request-Id"] = request_id
        return response
    return failure(request_id, method, error)
