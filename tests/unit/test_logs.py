"""The log scrubber: credentials in URLs, headers and key/value text never reach a log line,
at any level. The end-to-end proof, a real server at DEBUG, is in
tests/integration/test_debug_logs.py."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from callbridge.logs import JsonFormatter, SecretFilter, configure_logging, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connecting to wss://bot:hunter22@bots.example.com/x", "hunter22"),
        ('127.0.0.1:5 - "WebSocket /bot?token=s3cr3t&lang=en" [accepted]', "s3cr3t"),
        ("POST https://crm.example.com/hook?sig=abcdef123&id=1 failed", "abcdef123"),
        ("> Authorization: Basic Ym90OmJvdC1wYXNz", "Ym90OmJvdC1wYXNz"),
        ("headers={'authorization': 'Bearer eyJhbGciOi.x.y', 'host': 'h'}", "eyJhbGciOi"),
        ('Proxy-Authorization: Digest username="u", response="9a8b7c"', "9a8b7c"),
        ("{'api_token_hash': 'pbkdf2$120000$aa$bb', 'sid': 'acme'}", "pbkdf2$120000"),
        ('{"webhook_secret": "whsec_XYZ123"}', "whsec_XYZ123"),
        ("sip trunk password=pa55word rejected", "pa55word"),
        ("Cookie: session=abc123", "abc123"),
    ],
)
def test_redact_removes_the_credential(text: str, secret: str) -> None:
    scrubbed = redact(text)
    assert secret not in scrubbed
    assert "***" in scrubbed


def test_redact_keeps_ordinary_lines() -> None:
    for line in (
        "request",
        "dynamic URL answered",
        "rate limit of 200 requests per minute exceeded",
        "stream connected to ws://127.0.0.1:8765/bot",
        "call ended status=completed talk_time_s=40",
    ):
        assert redact(line) == line


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_extra_fields_and_exception_text_are_scrubbed(captured: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    try:
        raise RuntimeError("GET https://h.example/x?token=tok-in-exc failed")
    except RuntimeError:
        log.exception("delivery failed", extra={"url": "https://h.example/cb?token=tok-extra"})
    line = json.loads(captured.getvalue())
    assert "tok-extra" not in json.dumps(line)
    assert "tok-in-exc" not in line["exc"]
    assert "RuntimeError" in line["exc"]


def test_websockets_handshake_and_frames_are_dropped_but_state_lines_kept() -> None:
    keep = SecretFilter()
    records = [
        ("> GET %s HTTP/1.1", ("/bot?token=t",), False),
        ("> %s: %s", ("Authorization", "Basic abc"), False),
        ("> %s", ('TEXT \'{"event": "start"}\' [20 bytes]',), False),
        ("= connection is %s", ("OPEN",), True),
        ("< HTTP/1.1 %d %s", (101, "Switching Protocols"), True),
        ("x half-closing TCP connection", (), True),
    ]
    for msg, args, kept in records:
        record = logging.LogRecord("websockets.client", logging.DEBUG, "", 0, msg, args, None)
        assert keep.filter(record) is kept, msg


def test_wire_level_libraries_never_log_below_their_floor() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("DEBUG")
        for name in ("aiosqlite", "asyncpg", "sqlalchemy", "httpx", "httpcore"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
        assert logging.getLogger("websockets.client").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("callbridge").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_uvicorn_color_message_is_left_out_of_json_lines() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started %d", (7,), None)
    record.color_message = "Started \x1b[36m%d\x1b[0m"
    record.port = 8080
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "Started 7"
    assert "color_message" not in entry
    assert entry["port"] == 8080  # other extras stay
