"""Structured logging: one JSON object per line with the request id and call sid in context.

No log level prints a credential. Libraries that log wire-level detail (statements with their
parameters, request lines, headers, frames) never log below a floor, whatever the level asked
for; the websockets client and server keep their connection-state lines at DEBUG but not their
handshake headers or data frames; and every line that is written is scrubbed of URL
credentials, query-string values, Authorization headers and `token=`/`secret:`-style values.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# uvicorn repeats its message with ANSI colour codes for terminals; `msg` already has it.
_STANDARD.add("color_message")


class JsonFormatter(logging.Formatter):
    """Renders the record's message, level, logger and every `extra` field as JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, (int, float, bool, type(None))) else str(value)
                )
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


_WIRE_FLOORS: dict[str, int] = {
    # Full request URLs (a callback URL's query may carry a token) and request headers.
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "hpack": logging.WARNING,
    # Every statement with its parameters: token hashes, webhook secrets, callback URLs.
    "aiosqlite": logging.INFO,
    "asyncpg": logging.INFO,
    "sqlalchemy": logging.WARNING,
    "multipart": logging.INFO,
    "python_multipart": logging.INFO,
}
"""Loggers that never go below these levels: below them they log wire-level data."""

_REDACTED = "***"
_SCRUBS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"<>]+@"), r"\1" + _REDACTED + "@"),
    # ?name=value&name=value: query values are often credentials (token=, sig=, key=)
    (re.compile(r"([?&][^\s=&#'\"<>?]+=)[^\s&#'\"<>]+"), r"\1" + _REDACTED),
    # Authorization / Cookie header values
    (
        re.compile(r"(?i)\b((?:proxy-)?authorization|(?:set-)?cookie)([\"']?\s*[:=]\s*)[^\r\n]+"),
        r"\1\2" + _REDACTED,
    ),
    # Basic/Bearer/Digest credentials wherever they appear
    (re.compile(r"(?i)\b(basic|bearer|digest)\s+[A-Za-z0-9+/=._~,:-]{6,}"), r"\1 " + _REDACTED),
    # token=…, "secret": "…", password: …, signature=… (also api_token_hash, webhook_secret)
    (
        re.compile(
            r"(?i)\b([\w-]*(?:token|secret|passw(?:or)?d|signature)[\w-]*)"
            r"([\"']?\s*[:=]\s*)([\"']?)[^\s\"',&;)}\]]+"
        ),
        r"\1\2\3" + _REDACTED,
    ),
)


_TRIGGERS: tuple[str, ...] = ("://", "?", "&", "authoriz", "cookie", "basic", "bearer")
_TRIGGERS += ("digest", "token", "secret", "passw", "signature")
"""What any scrub needs to find (lowercase). Most lines have none, and substring tests are far
cheaper than the scrubs' regular expressions: a log line per request must stay cheap."""


def redact(text: str) -> str:
    """`text` without the credentials the scrubs recognise."""
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


_WS_SAFE_FORMATS = re.compile(r"^(= |x |! |% |- |< HTTP/1\.1 |> HTTP/1\.1 |[<>] EOF)")
"""websockets DEBUG lines that carry no request target, header or frame payload."""


class SecretFilter(logging.Filter):
    """Drops websockets' handshake and frame lines, and scrubs every other record (message,
    extra fields and exception text) before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("websockets") and record.levelno < logging.INFO:
            fmt = record.msg if isinstance(record.msg, str) else ""
            if not _WS_SAFE_FORMATS.match(fmt):
                return False
        record.msg = redact(record.getMessage())
        record.args = None
        fields = record.__dict__
        for key in fields.keys() - _STANDARD:
            value = fields[key]
            if not isinstance(value, (int, float, bool, type(None))) and key[:1] != "_":
                fields[key] = redact(str(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SecretFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs of uvicorn repeat what our middleware logs, and would log query strings.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
    for name, floor in _WIRE_FLOORS.items():
        logging.getLogger(name).setLevel(max(root.level, floor))
