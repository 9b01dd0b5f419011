"""Real `callbridge serve` processes for multi-process tests: a dedicated shared database
(a SQLite file, or a fresh PostgreSQL database), start/ready/kill by PID, and small HTTP
helpers. Only processes started here are ever signalled, and only by their own PID."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from callbridge.store.schema import upgrade_to_head

from ..conftest import PG_URL, basic
from ..harness import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[2]
CALLBRIDGE = Path(sys.executable).parent / "callbridge"
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def shared_database(backend: str, tmp_path: Path, *, migrated: bool = True) -> Iterator[str]:
    """A database for the test alone, migrated to head unless `migrated` is false, dropped
    afterwards (PostgreSQL)."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
        if migrated:
            upgrade_to_head(url)
        yield url
        return
    assert PG_URL is not None
    import asyncpg

    admin_dsn = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"cb_procs_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        if migrated:
            upgrade_to_head(url)
        yield url
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Server:
    """One `callbridge serve` process on 127.0.0.1."""

    def __init__(
        self,
        name: str,
        database_url: str,
        workdir: Path,
        *,
        config: Path | None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.database_url = database_url
        self.workdir = workdir
        self.config = config
        self.env = env or {}
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, config: Path | bool | None = True) -> None:
        assert self.process is None or self.process.poll() is not None
        args = [str(CALLBRIDGE), "serve", "--port", str(self.port)]
        args += ["--database-url", self.database_url, "--allow-private-urls"]
        args += ["--data-dir", str(self.workdir / f"{self.name}-data")]
        chosen = self.config if config is True else config
        if isinstance(chosen, Path):
            args += ["--config", str(chosen)]
        env = {**os.environ, "CALLBRIDGE_LOG_LEVEL": "WARNING", **self.env}
        env.pop("CALLBRIDGE_TEST_DATABASE_URL", None)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                args, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"{self.name} exited: {self.log_tail()}")
                try:
                    r = await client.get(f"{self.base_url}/readyz")
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {timeout_s}s: {self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal our own child by its PID and reap it."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@asynccontextmanager
async def demo_server(
    name: str, workdir: Path, *, env: dict[str, str] | None = None
) -> AsyncIterator[Server]:
    """One ready server on its own SQLite file with the harness's demo config, stopped with
    SIGTERM (a clean shutdown) when the block ends."""
    config = workdir / "callbridge.toml"
    config.write_text(DEFAULT_CONFIG)
    server = Server(
        name, f"sqlite+aiosqlite:///{workdir / f'{name}.db'}", workdir, config=config, env=env
    )
    server.start()
    try:
        await server.wait_ready()
        yield server
    finally:
        server.kill(signal.SIGTERM)


def path_uri(uri: str) -> str:
    return quote(uri, safe="")


async def set_phone(
    client: httpx.AsyncClient, server: Server, uri: str, auth: dict[str, str], **behaviour: Any
) -> None:
    r = await client.put(
        f"{server.base_url}/sim/v1/numbers/{path_uri(uri)}", json=behaviour, headers=auth
    )
    assert r.status_code == 200, r.text


async def phone_action(
    client: httpx.AsyncClient, server: Server, uri: str, auth: dict[str, str], action: str
) -> int:
    r = await client.post(
        f"{server.base_url}/sim/v1/numbers/{path_uri(uri)}/actions",
        json={"action": action},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    touched: int = r.json()["legs_affected"]
    return touched


async def agent_state(
    client: httpx.AsyncClient, server: Server, account: str, uri: str, auth: dict[str, str]
) -> dict[str, Any]:
    """{status, available, active_call} of the device with this number, via the Users API."""
    r = await client.get(
        f"{server.base_url}/v2/accounts/{account}/users",
        params={"devices.contact_uri": uri, "fields": "devices,active_call"},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    [item] = r.json()["response"]
    user = item["data"]
    [device] = [d for d in user["devices"] if d["contact_uri"] == uri]
    return {
        "status": device["status"],
        "available": device["available"],
        "active_call": user["active_call"],
    }


__all__ = [
    "ROOT",
    "Server",
    "agent_state",
    "basic",
    "free_port",
    "phone_action",
    "set_phone",
    "shared_database",
]
