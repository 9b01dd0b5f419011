"""Kamailio for tests: the repo's edge config (deploy/kamailio/kamailio.cfg) run in the
foreground on a free 127.0.0.1 port with a dispatcher list of our nodes, in its own process
group so that stopping it ends exactly the processes it forked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.sip.sipp import HOST, free_port, port_free

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "kamailio" / "kamailio.cfg"
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")


def kamailio_path() -> str | None:
    return shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
    )


@dataclass
class Kamailio:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def proxy_uri(self) -> str:
        return f"sip:{HOST}:{self.port};lr"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to its process group (the main process and the children it forked)."""
        if self.process.poll() is not None:
            return
        pgid = self.process.pid  # started with start_new_session: its own group
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=5)


def start_kamailio(
    workdir: Path,
    *,
    nodes: Sequence[int],
    registrars: Sequence[int] = (),
    ping_interval_s: int = 1,
    fr_timer_ms: int = 2000,
    port: int | None = None,
) -> Kamailio:
    binary = kamailio_path()
    if binary is None:
        raise RuntimeError("kamailio is not installed (Debian package kamailio)")
    workdir.mkdir(parents=True, exist_ok=True)
    ds_list = workdir / "dispatcher.list"
    lines = [f"1 sip:{HOST}:{port}" for port in nodes]
    lines += [f"2 sip:{HOST}:{port}" for port in registrars]
    ds_list.write_text("\n".join(lines) + "\n")
    port = port or free_port()
    defines = {
        "LISTEN": f"udp:{HOST}:{port}",
        "DS_LIST": f'"{ds_list}"',
        "MODULES": f'"{MODULES}/"',
        "RUNDIR": f'"{workdir}"',
        "PING_INTERVAL_S": str(ping_interval_s),
        "FR_TIMER_MS": str(fr_timer_ms),
        "CHILDREN": "2",
    }
    args = [binary, "-DD", "-E", "-f", str(CONFIG), "-m", "32", "-M", "4"]
    for name, value in defines.items():
        args += ["-A", f"{name}={value}"]
    log = workdir / "kamailio.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    kamailio = Kamailio(process, port, log)
    deadline = time.monotonic() + 10
    while port_free(port):
        if process.poll() is not None or time.monotonic() > deadline:
            kamailio.stop()
            raise RuntimeError(f"kamailio did not start: {kamailio.output()[-3000:]}")
        time.sleep(0.05)
    return kamailio
