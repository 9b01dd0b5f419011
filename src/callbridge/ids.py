"""Identifiers: 32-hex sids for calls, legs and events, and request ids."""

from __future__ import annotations

import uuid


def new_sid() -> str:
    """A 32-character lowercase hex identifier, as Exotel uses for call sids."""
    return uuid.uuid4().hex


def new_request_id() -> str:
    return uuid.uuid4().hex
