"""Inbound calls: placeholder until the inbound engine lands."""

from __future__ import annotations

from callbridge.api.services import Services


def install(services: Services) -> None:
    """Wire inbound call handling into a running app (driver handler, sim entry point)."""
    return None
