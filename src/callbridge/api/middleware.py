"""Outermost ASGI layer: request ids, the body-size bound, and the one place errors are rendered."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callbridge.api.v1_dialect import error_response
from callbridge.errors import CallbridgeError, InternalError, PayloadTooLarge, ValidationFailed
from callbridge.ids import new_request_id
from callbridge.logs import request_id_var
from callbridge.metrics import Metrics

log = logging.getLogger("callbridge.http")


class _BodyTooLarge(Exception):
    pass


class EnvelopeMiddleware:
    """Gives every request an id, bounds its body, and turns any escaped error into the
    Exotel envelope (500/1100 with no internals for unknown errors)."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # `/v3/accounts/acme/calls/` is the calls resource, as clients expect.
            raw: bytes = scope.get("raw_path") or path.encode()
            scope = {**scope, "path": path.rstrip("/") or "/", "raw_path": raw.rstrip(b"/") or b"/"}
        request_id = new_request_id()
        rid_bytes = request_id.encode()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": None}
        limit = self.max_body_bytes

        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            # PostgreSQL cannot store or compare NUL in text: refuse it before any lookup.
            await self._send_error(
                send, scope, request_id, ValidationFailed("NUL characters are not allowed")
            )
            self._log(scope, 400, started)
            request_id_var.reset(token)
            return

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._send_error(
                send, scope, request_id, PayloadTooLarge(f"request body exceeds {limit} bytes")
            )
            self._log(scope, 413, started)
            request_id_var.reset(token)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = message.get("headers") or []
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    # Every response names its request, plain JSON ones (probes, sim) too.
                    message = {**message, "headers": [*headers, (b"x-request-id", rid_bytes)]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if status_holder["status"] is None:
                await self._send_error(
                    send,
                    scope,
                    request_id,
                    PayloadTooLarge(f"request body exceeds {limit} bytes"),
                )
                status_holder["status"] = 413
        except CallbridgeError as exc:
            if status_holder["status"] is None:
                await self._send_error(send, scope, request_id, exc)
                status_holder["status"] = exc.http_status
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if status_holder["status"] is None:
                await self._send_error(send, scope, request_id, InternalError())
                status_holder["status"] = 500
        finally:
            self._log(scope, status_holder["status"], started)
            request_id_var.reset(token)

    async def _send_error(
        self, send: Send, scope: Scope, request_id: str, error: CallbridgeError
    ) -> None:
        response = error_response(scope["path"], request_id, scope["method"], error)
        await response({"type": "http"}, _empty_receive, send)

    def _log(self, scope: Scope, status: int | None, started: float) -> None:
        elapsed_s = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_request(scope, status, elapsed_s)
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            "request",
            extra={
                "method": scope["method"],
                "path": scope.get("path"),
                "status": status,
                "elapsed_ms": round(elapsed_s * 1000, 2),
            },
        )


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
