"""Bringing a database to the current schema: Alembic migrations, or `create_all` for tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig

from callbridge.store.repo import Store

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade_to_head(database_url: str) -> None:
    """Run every pending migration (blocking; call from a thread or the CLI)."""
    command.upgrade(alembic_config(database_url), "head")


async def ensure_schema(store: Store) -> None:
    """Migrate the store's database to head. Serialised across processes by the database:
    SQLite's write lock, PostgreSQL's advisory lock."""
    await asyncio.to_thread(upgrade_to_head, store.url)
