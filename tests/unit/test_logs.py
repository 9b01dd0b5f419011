"""JSON log lines: uvicorn's terminal-coloured copy of its message is not repeated in them."""

from __future__ import annotations

import json
import logging

from callbridge.logs import JsonFormatter


def test_uvicorn_color_message_is_left_out_of_json_lines() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started %d", (7,), None)
    record.color_message = "Started \x1b[36m%d\x1b[0m"
    record.port = 8080
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "Started 7"
    assert "color_message" not in entry
    assert entry["port"] == 8080  # other extras stay
