"""Start and stop a real `callbridge serve` process for benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def callbridge_server(
    config: str, *, env: dict[str, str] | None = None, database_url: str | None = None
) -> Iterator[tuple[str, int, int]]:
    """Yield (host, port, pid) of a ready server; stop it (by PID) afterwards."""
    with tempfile.TemporaryDirectory(prefix="callbridge-bench-") as tmp:
        config_path = Path(tmp) / "config.toml"
        config_path.write_text(config)
        port = free_port()
        cmd = [
            str(ROOT / ".venv" / "bin" / "callbridge"),
            "serve",
            "--config",
            str(config_path),
            "--port",
            str(port),
            "--data-dir",
            tmp,
            "--allow-private-urls",
            "--log-level",
            "WARNING",
        ]
        if database_url:
            cmd += ["--database-url", database_url]
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "server.log", "wb"),  # noqa: SIM115
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    sys.stderr.write((Path(tmp) / "server.log").read_text())
                    raise RuntimeError("server exited during start")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become ready")
                time.sleep(0.1)
            yield "127.0.0.1", port, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
