"""Identifiers: 32-hex sids for calls, legs and events, and request ids."""

from __future__ import annotations

import os


def new_sid() -> str:
    """A 32-character lowercase hex identifier (128 random bits), as Exotel uses for call sids."""
    return os.urandom(16).hex()


def new_request_id() -> str:
    return os.urandom(16).hex()
