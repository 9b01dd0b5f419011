"""CLI commands beyond `serve`: the standalone delivery worker, webhook secrets, replays."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from callbridge.clock import SystemClock
from callbridge.engine.lease import new_node_id
from callbridge.settings import Settings
from callbridge.store import outbox_log
from callbridge.store.repo import Store
from callbridge.store.schema import ensure_schema
from callbridge.webhooks import secrets as secret_store
from callbridge.webhooks.ssrf import UrlGuard
from callbridge.webhooks.worker import DeliveryWorker


def _out(payload: object) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.resolved_database_url())
    try:
        await ensure_schema(store)
        if args.command == "worker":
            return await _worker(store, settings)
        if args.command == "accounts" and args.accounts_command == "webhook-secret":
            return await _webhook_secret(store, args.account_sid, rotate=args.rotate)
        if args.command == "callbacks" and args.callbacks_command == "replay":
            return await _replay(store, args.account_sid, args.delivery_id)
    finally:
        await store.close()
    return 2


async def _worker(store: Store, settings: Settings) -> int:
    clock = SystemClock()
    worker = DeliveryWorker.from_settings(
        settings,
        store.write_engine,
        clock,
        new_node_id(),
        guard=UrlGuard(settings.allow_private_urls),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    task = asyncio.create_task(worker.run())
    await stop.wait()
    await worker.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await worker.aclose()
    return 0


async def _webhook_secret(store: Store, account_sid: str, *, rotate: bool) -> int:
    now = SystemClock().now()
    if rotate:
        async with store.tx() as conn:
            secret = await secret_store.rotate_secret(conn, account_sid, now)
        if secret is None:
            sys.stderr.write(f"callbridge: account {account_sid} not found\n")
            return 1
        _out({"account_sid": account_sid, "webhook_secret": secret, "rotated": True})
        return 0
    async with store.read() as conn:
        secrets = await secret_store.get_secrets(conn, account_sid)
    if not secrets:
        sys.stderr.write(f"callbridge: account {account_sid} not found\n")
        return 1
    _out({"account_sid": account_sid, "webhook_secret": secrets[0]})
    return 0


async def account_secrets(settings: Settings, account_sid: str) -> list[str]:
    """The account's webhook secrets (current first); empty when there is no such account."""
    store = Store(settings.resolved_database_url())
    try:
        async with store.read() as conn:
            return await secret_store.get_secrets(conn, account_sid)
    finally:
        await store.close()


async def _replay(store: Store, account_sid: str, delivery_id: int) -> int:
    async with store.tx() as conn:
        row = await outbox_log.replay(conn, account_sid, delivery_id, SystemClock().now())
    if row is None:
        sys.stderr.write(f"callbridge: delivery {delivery_id} not found in {account_sid}\n")
        return 1
    _out({"id": row.id, "event_sid": row.event_sid, "status": row.status, "url": row.url})
    return 0
