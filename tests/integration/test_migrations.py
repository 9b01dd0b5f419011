"""Upgrading a database written before the outbox's terminal key: old duplicate terminal events
(the bug the key prevents) neither block the upgrade nor lose their delivery history."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from callbridge.store.outbox import terminal_key
from callbridge.store.schema import alembic_config, upgrade_to_head

from ..conftest import PG_URL
from ..users.servers import shared_database

NOW = datetime(2026, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"] if PG_URL else ["sqlite"])
def test_upgrade_keeps_old_duplicate_terminal_events_and_keys_the_first(
    backend: str, tmp_path: Path
) -> None:
    with shared_database(backend, tmp_path) as url:
        config = alembic_config(url)
        command.downgrade(config, "0001")
        rows = [(f"ev{i}", "call1", "terminal", "https://crm.example/hook") for i in range(2)] + [
            ("ev2", "call1", "answered", "https://crm.example/hook")
        ]

        def insert(connection: Connection) -> None:
            for event_sid, call_sid, event_type, url_ in rows:
                connection.execute(
                    text(
                        "INSERT INTO outbox (event_sid, account_sid, call_sid, event_type, url, "
                        "method, content_type, payload, status, attempts, next_attempt_at, "
                        "created_at) VALUES (:e, 'acme', :c, :t, :u, 'POST', "
                        "'application/json', '{}', 'delivered', 1, :now, :now)"
                    ),
                    {"e": event_sid, "c": call_sid, "t": event_type, "u": url_, "now": NOW},
                )

        _run_sync(url, insert)
        upgrade_to_head(url)
        found: list[tuple[str, str | None]] = []

        def read(connection: Connection) -> None:
            result = connection.execute(
                text("SELECT event_sid, terminal_key FROM outbox ORDER BY id")
            )
            found.extend((r[0], r[1]) for r in result)

        _run_sync(url, read)
        assert found == [
            ("ev0", terminal_key("https://crm.example/hook")),
            ("ev1", None),
            ("ev2", None),
        ]


def _run_sync(url: str, work: Callable[[Connection], None]) -> None:
    """Run `work(connection)` in one committed transaction, through the async driver."""

    async def go() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(work)
        finally:
            await engine.dispose()

    asyncio.run(go())
