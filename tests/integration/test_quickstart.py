"""The README's quickstart, run as written: its commands are read from README.md itself (the
blocks marked `<!-- quickstart: NAME -->`), so the README cannot drift from what works. Only
the ports change (8080 and 9000 may be taken on a shared machine). `make run` serves the demo,
`callbridge listen` receives the callbacks, the example call completes and can be placed
again at once, and Ctrl-C stops both without an error from make."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import basic
from ..users.servers import ROOT, free_port

pytestmark = pytest.mark.slow

AUTH = basic("demo_key", "demo_token")
_BLOCK = re.compile(r"<!-- quickstart: (\w+) -->\n```sh\n(.*?)```", re.DOTALL)


def quickstart() -> dict[str, str]:
    """The marked shell blocks of README.md by name."""
    return dict(_BLOCK.findall((ROOT / "README.md").read_text()))


class Scratch:
    """A directory laid out like the repository for `make run` (Makefile, pyproject.toml with
    its time kept, examples/ and this checkout's .venv), so the demo's ./data is its own."""

    def __init__(self, path: Path, server_port: int, listen_port: int) -> None:
        self.path = path
        self.server_port = server_port
        self.listen_port = listen_port
        for name in ("Makefile", "pyproject.toml"):
            shutil.copy2(ROOT / name, path / name)
        shutil.copytree(ROOT / "examples", path / "examples")
        (path / ".venv").symlink_to(ROOT / ".venv")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}

    def command(self, text: str) -> str:
        """A README command with this test's ports."""
        return text.replace("8080", str(self.server_port)).replace("9000", str(self.listen_port))

    def start(self, text: str, log: str) -> subprocess.Popen[bytes]:
        """In its own process group, as a terminal runs a foreground job."""
        with (self.path / log).open("wb") as out:
            return subprocess.Popen(
                ["bash", "-c", text],
                cwd=self.path,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(self, text: str) -> str:
        result = subprocess.run(
            ["bash", "-c", self.command(text)],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def read(self, log: str) -> str:
        return (self.path / log).read_text(errors="replace")

    def printed(self, log: str, text: str) -> Callable[[], bool]:
        return lambda: text in self.read(log)


def interrupt(process: subprocess.Popen[bytes]) -> int:
    """Ctrl-C: SIGINT to the job's process group (ours, started above)."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    made = subprocess.run(
        ["make", "-q", ".venv/.serve-stamp"], cwd=ROOT, capture_output=True, timeout=30
    )
    if made.returncode != 0:
        pytest.fail("the checkout's .venv is not up to date: run `make .venv/.installed-stamp`")
    yield Scratch(tmp_path, free_port(), free_port())


def test_the_readme_quickstart_runs_as_written(scratch: Scratch) -> None:
    blocks = quickstart()
    assert set(blocks) == {"serve", "listen", "call", "sim"}
    assert blocks["serve"].strip() == "make run"
    server = scratch.start(f"make run PORT={scratch.server_port}", "make.log")
    listener: subprocess.Popen[bytes] | None = None
    base = f"http://127.0.0.1:{scratch.server_port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            wait_until(lambda: _ready(client, server, scratch), "make run")
            listener = scratch.start(scratch.command(blocks["listen"]), "listen.log")
            wait_until(scratch.printed("listen.log", "Ctrl-C"), "callbridge listen")
            assert "checked with the webhook secret of account demo" in scratch.read("listen.log")

            for placed in (1, 2):  # the second call is admitted: the first one freed the agent
                answer = json.loads(scratch.run(blocks["call"]))
                assert answer["http_code"] == 200, answer
                sid = answer["response"]["call_details"]["sid"]
                details = _terminal(client, sid)
                assert (details["status"], details["total_talk_time"]) == ("completed", 8)
                line = f"POST /hook  event terminal  call {sid}  status completed  signature valid"
                wait_until(scratch.printed("listen.log", line), f"callback {placed}")

            behaviour = json.loads(scratch.run(blocks["sim"]))
            assert behaviour["contact_uri"] == "+919800000001"
            assert (behaviour["answer_after"], behaviour["hangup_after"]) == (3, 30)

            metrics = _samples(client.get("/metrics").text)
            completed = ("demo", "outbound", "completed")
            assert metrics[("callbridge_calls_total", completed)] == 2
            assert metrics[("callbridge_callback_attempts_total", ("delivered",))] == 2
    finally:
        codes = {"make run": interrupt(server)}
        if listener is not None:
            codes["listen"] = interrupt(listener)
    made = scratch.read("make.log")
    # GNU make always ends itself with the signal it got once its recipe is done, which a
    # shell does not report for Ctrl-C; what must not happen is make reporting the recipe
    # (the server) as failed, or a traceback.
    assert codes["make run"] in (0, -signal.SIGINT) and codes["listen"] == 0, made[-3000:]
    assert '"msg":"callbridge stopped"' in made
    for noise in ("make: ***", "Interrupt", "Terminated", "Traceback", "color_message"):
        assert noise not in made
    assert "Traceback" not in scratch.read("listen.log")


def _ready(client: httpx.Client, server: subprocess.Popen[bytes], scratch: Scratch) -> bool:
    assert server.poll() is None, scratch.read("make.log")[-3000:]
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _terminal(client: httpx.Client, sid: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ended() -> bool:
        r = client.get(f"/v3/accounts/demo/calls/{sid}", headers=AUTH)
        found.update(r.json()["response"]["call_details"])
        return found["state"] == "terminal"

    wait_until(ended, f"call {sid} to end", timeout_s=40)
    return found


def _samples(text: str) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
