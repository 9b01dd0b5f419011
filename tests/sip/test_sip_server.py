"""`callbridge serve --driver sip` as a real process, configured by CALLBRIDGE_SIP_* variables and
driven over HTTP: a click-to-call from a SIP agent (SIPp) to a customer number on the trunk
(another SIPp), recorded in dual channel and served over HTTP, with its terminal callback. On
SIGTERM the server ends and so do its media workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.sip.conftest import sip_settings
from tests.sip.sipp import Sipp
from tests.sip.support import (
    ACCOUNT,
    AGENT_HZ,
    AUTH,
    CONFIG,
    CUSTOMER_HZ,
    EXOPHONE,
    channel_tones,
    near,
    wait_terminal,
)
from tests.users.servers import free_port
from tests.webhooks.helpers import Receiver

pytestmark = pytest.mark.sip

CALLBRIDGE = Path(sys.executable).parent / "callbridge"
TRUNK_PASSWORD = "trunk-secret-4f1d"


class SipServer:
    """One `callbridge serve --driver sip` process we started; signalled only by its PID."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = workdir / "server.log"
        config = workdir / "callbridge.toml"
        config.write_text(CONFIG)
        args = [str(CALLBRIDGE), "serve", "--driver", "sip", "--port", str(self.port)]
        args += ["--config", str(config), "--data-dir", str(workdir / "data")]
        args += ["--allow-private-urls"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                args,
                cwd=workdir,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited: {self.log()[-3000:]}")
                try:
                    if (await client.get(f"{self.base_url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"server not ready: {self.log()[-3000:]}")

    def children(self) -> list[int]:
        """PIDs of the server's child processes (its SIP media workers)."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            text = (task / "children").read_text().split()
            pids += [int(pid) for pid in text]
        return pids

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], SipServer]]:
    started: list[SipServer] = []

    def factory(env: dict[str, str]) -> SipServer:
        server = SipServer(tmp_path, env)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


async def test_recorded_click_to_call_through_a_sip_server_process(
    start_server: Callable[[dict[str, str]], SipServer],
    sipp: Callable[..., Sipp],
    receiver: Receiver,
) -> None:
    agent = sipp("uas_answer_tone.xml", tone_hz=AGENT_HZ, pause_ms=200)
    trunk = sipp("uas_answer_tone_then_bye.xml", tone_hz=CUSTOMER_HZ, pause_ms=2000)
    ports = sip_settings(workers=2)
    server = start_server(
        {
            "CALLBRIDGE_LOG_LEVEL": "INFO",
            "CALLBRIDGE_SIP_BIND_HOST": "127.0.0.1",
            "CALLBRIDGE_SIP_PORT": str(ports.sip_port),
            "CALLBRIDGE_SIP_RTP_PORT_MIN": str(ports.sip_rtp_port_min),
            "CALLBRIDGE_SIP_RTP_PORT_MAX": str(ports.sip_rtp_port_max),
            "CALLBRIDGE_SIP_WORKERS": "2",
            "CALLBRIDGE_SIP_TRUNK_HOST": "127.0.0.1",
            "CALLBRIDGE_SIP_TRUNK_PORT": str(trunk.port),
            "CALLBRIDGE_SIP_TRUNK_USERNAME": "callbridge",
            "CALLBRIDGE_SIP_TRUNK_PASSWORD": TRUNK_PASSWORD,
        }
    )
    await server.wait_ready()
    workers = server.children()
    assert len(workers) == 2
    calls_url = f"{server.base_url}/v3/accounts/{ACCOUNT}/calls"
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            calls_url,
            headers=AUTH,
            json={
                "from": {"contact_uri": f"sip:agent@{agent.uri_host}", "state_management": True},
                "to": {"contact_uri": "09800000001"},
                "virtual_number": EXOPHONE,
                "recording": {"record": True, "channels": "dual"},
                "status_callback": [{"event": "terminal", "url": receiver.url("/cb")}],
            },
        )
        assert r.status_code == 200, r.text
        sid = r.json()["response"]["call_details"]["sid"]
        details = await wait_terminal(client, f"{calls_url}/{sid}", timeout_s=20)
        assert details["status"] == "completed"
        assert details["total_talk_time"] == 2
        legs = (await client.get(f"{calls_url}/{sid}/legs", headers=AUTH)).json()["response"][
            "leg_details"
        ]
        assert [(x["contact_uri"], x["status"]) for x in legs["to"]] == [
            ("+919800000001", "completed")
        ]
        [recording] = details["recordings"]
        assert recording["url"].startswith(server.base_url)
        mp3 = await client.get(recording["url"], headers=AUTH)
        assert mp3.status_code == 200
        channels, duration_s, (left, right) = channel_tones(mp3.content)
        assert channels == 2 and abs(duration_s - 2.0) <= 0.4
        assert near(left, AGENT_HZ) and near(right, CUSTOMER_HZ), (left, right)
        # The agent's busy mark is gone: the same agent can be called again at once.
        again = await client.post(
            calls_url,
            headers=AUTH,
            json={
                "from": {"contact_uri": f"sip:agent@{agent.uri_host}", "state_management": True},
                "to": {"contact_uri": "09800000002"},
                "virtual_number": EXOPHONE,
                "attempt_time_out": 1,
            },
        )
        assert again.status_code == 200, again.text
        await wait_terminal(
            client, f"{calls_url}/{again.json()['response']['call_details']['sid']}"
        )
    await receiver.wait_for(1, timeout_s=10)
    terminal = json.loads(receiver.requests[0].body)
    assert terminal["event_details"]["event_type"] == "terminal"
    assert terminal["call_details"]["sid"] == sid
    # Both carry a signed link to the same recording, each minted when it was sent.
    assert [r["url"].split("?")[0] for r in terminal["call_details"]["recordings"]] == [
        r["url"].split("?")[0] for r in details["recordings"]
    ]
    assert await asyncio.to_thread(agent.wait, 10) == 0
    assert await asyncio.to_thread(trunk.wait, 10) == 0

    # uvicorn shuts down gracefully, then re-raises SIGTERM: the exit status is -15.
    assert server.stop() in (0, -signal.SIGTERM)
    for _ in range(100):
        if not any(alive(pid) for pid in workers):
            break
        await asyncio.sleep(0.05)
    assert not any(alive(pid) for pid in workers)
    log = server.log()
    assert "callbridge stopped" in log
    assert TRUNK_PASSWORD not in log
    assert sid in log
