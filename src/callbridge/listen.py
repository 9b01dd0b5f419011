"""`callbridge listen`: a small status-callback receiver for trying callbridge out locally. It
prints each callback (method, event, call sid, status, the body) and checks its Standard
Webhooks signature with the account's webhook secret."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, TextIO
from urllib.parse import parse_qsl

from starlette.types import Message, Receive, Scope, Send

from callbridge.webhooks.signing import verify

MAX_BODY_BYTES = 1024 * 1024
SECRET_HINT = "get it with `callbridge accounts webhook-secret SID`, or pass --account SID"
PRIVATE_URLS_NOTE = (
    "the server calls a loopback URL only with --allow-private-urls"
    " (CALLBRIDGE_ALLOW_PRIVATE_URLS=true), which `make run` passes"
)


@dataclass(frozen=True, slots=True)
class Received:
    """One callback as the listener understood it."""

    method: str
    path: str
    payload: dict[str, Any]
    signature: str
    """`valid`, `INVALID`, `unsigned` or `not checked`."""

    @property
    def accepted(self) -> bool:
        return self.signature in ("valid", "not checked")

    def describe(self, at: datetime) -> str:
        """A header line (time, method, path, event, call sid, status, signature), then the
        payload as indented JSON."""
        event = self.payload.get("event_details")
        details = self.payload.get("call_details")
        event_type = event.get("event_type") if isinstance(event, dict) else None
        details = details if isinstance(details, dict) else {}
        # v3 callbacks say `sid`/`status`; calls made through the v2 API use v2 names.
        call_sid = details.get("sid") or details.get("call_sid")
        status = details.get("status") or details.get("call_status")
        head = (
            f"[{at:%H:%M:%S}] {self.method} {self.path}  event {event_type or '-'}"
            f"  call {call_sid or '-'}  status {status or '-'}  signature {self.signature}"
        )
        return head + "\n" + json.dumps(self.payload, indent=2, ensure_ascii=False) + "\n"


def decode_payload(method: str, content_type: str, body: bytes, query: str) -> dict[str, Any]:
    """The callback document from any of its encodings: a JSON body, multipart form fields or
    query parameters (form and query values are JSON-encoded per top-level key)."""
    if method == "GET":
        return _nest(dict(parse_qsl(query, keep_blank_values=True)))
    if content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        fields: dict[str, str] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            content = part.get_content()
            if isinstance(name, str):
                fields[name] = content if isinstance(content, str) else repr(content)
        return _nest(fields)
    try:
        document = json.loads(body)
    except ValueError:
        return {"body": body.decode("utf-8", "replace")}
    return document if isinstance(document, dict) else {"body": document}


def _nest(fields: Mapping[str, str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, raw in fields.items():
        try:
            nested[key] = json.loads(raw)
        except ValueError:
            nested[key] = raw
    return nested


def check_signature(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *, now: int
) -> str:
    if not secrets:
        return "not checked"
    if "webhook-signature" not in headers:
        return "unsigned"
    try:
        timestamp = int(headers.get("webhook-timestamp", ""))
    except ValueError:
        return "INVALID"
    ok = verify(
        secrets,
        headers.get("webhook-id", ""),
        timestamp,
        body,
        headers["webhook-signature"],
        now=now,
    )
    return "valid" if ok else "INVALID"


class CallbackListener:
    """The ASGI app: answers every request 200 (401 when a signature does not verify)."""

    def __init__(
        self,
        secrets: Sequence[str],
        out: TextIO,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.secrets = list(secrets)
        self.out = out
        self.wall_clock = wall_clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        if body is None:
            await _answer(send, 413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method: str = scope["method"]
        # A GET callback is signed over an empty body.
        signed_body = b"" if method == "GET" else body
        received = Received(
            method=method,
            path=scope["path"],
            payload=decode_payload(
                method,
                headers.get("content-type", ""),
                body,
                scope.get("query_string", b"").decode("latin-1"),
            ),
            signature=check_signature(
                self.secrets, headers, signed_body, now=int(self.wall_clock())
            ),
        )
        self.out.write(received.describe(datetime.fromtimestamp(self.wall_clock())))
        self.out.flush()
        if received.accepted:
            await _answer(send, 200, {"status": "received"})
        else:
            await _answer(send, 401, {"error": f"signature {received.signature}"})


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, document: dict[str, str]) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def banner(host: str, port: int, signatures: str) -> str:
    base = f"http://{host}:{port}"
    return (
        f"callbridge listen: receiving status callbacks on {base}/ (any path)\n"
        f"  use it as a status_callback url, e.g. {base}/hook\n"
        f"  {PRIVATE_URLS_NOTE}\n"
        f"  signatures: {signatures}\n"
        "  Ctrl-C stops it.\n"
    )


def serve(host: str, port: int, secrets: Sequence[str], origin: str | None, out: TextIO) -> int:
    """Listen until interrupted. `origin` says where the secrets came from (for the banner)."""
    import uvicorn

    from callbridge.uvicorn_server import Server

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound_port: int = sock.getsockname()[1]
    if secrets:
        signatures = f"checked with {origin}"
    else:
        signatures = f"NOT checked: pass --secret whsec_… ({SECRET_HINT})"
    out.write(banner(host, bound_port, signatures))
    out.flush()
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    config = uvicorn.Config(
        CallbackListener(secrets, out),
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    Server(config).run(sockets=[sock])
    return 0


class ListenError(Exception):
    """The listener cannot start; the message is one line for the user."""
