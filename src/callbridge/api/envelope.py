"""The Exotel response envelope around every answer, success or failure."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from callbridge.errors import CallbridgeError


class EnvelopeResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # backslashreplace: an unpaired surrogate echoed in a message becomes its JSON escape
        # (`\ud800`) instead of failing the response.
        text = json.dumps(content, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "backslashreplace")


def success(
    request_id: str,
    method: str,
    body: dict[str, Any] | list[Any],
    *,
    http_code: int = 200,
    metadata: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> EnvelopeResponse:
    """`body` is merged into `response` (a dict), or becomes `response` (a list, for listings)."""
    response: dict[str, Any] | list[Any]
    if isinstance(body, dict):
        response = {"code": http_code, "error_data": None, "status": "success", **body}
    else:
        response = body
    content = {
        "request_id": request_id,
        "method": method,
        "http_code": http_code,
        "metadata": metadata,
        "response": response,
    }
    return EnvelopeResponse(content, status_code=http_code, headers=_with_id(headers, request_id))


def failure(request_id: str, method: str, error: CallbridgeError) -> EnvelopeResponse:
    content = {
        "request_id": request_id,
        "method": method,
        "http_code": error.http_status,
        "metadata": None,
        "response": {
            "code": error.http_status,
            "error_data": {
                "code": error.code,
                "description": error.description,
                "message": error.message,
            },
            "status": "failure",
        },
    }
    headers: dict[str, str] = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return EnvelopeResponse(
        content, status_code=error.http_status, headers=_with_id(headers, request_id)
    )


def _with_id(headers: dict[str, str] | None, request_id: str) -> dict[str, str]:
    merged = dict(headers or {})
    merged["X-Request-Id"] = request_id
    return merged
