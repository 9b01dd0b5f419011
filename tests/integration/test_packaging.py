"""`pip install .` gives a working server without the repository: the built wheel carries the
migrations and the dashboard page, and `callbridge serve` from a fresh virtualenv, started
outside the repository, migrates its database and serves a call to its end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..users.servers import ROOT, free_port
from .standalone import call_to_the_end, wait_ready

pytestmark = pytest.mark.slow

BUILD_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 600
PACKAGED = {
    "callbridge/py.typed",
    "callbridge/dashboard/index.html",
    "callbridge/store/migrations/env.py",
    "callbridge/store/migrations/script.py.mako",
    "callbridge/store/migrations/versions/0001_initial_schema.py",
}


def clean_env() -> dict[str, str]:
    """No CALLBRIDGE_* settings, no PYTHONPATH and no virtualenv of ours leaking in."""
    drop = ("CALLBRIDGE_", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def run(argv: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout_s
    )
    assert result.returncode == 0, f"{argv}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources (the repository stays untouched by the build)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(source)],
        tmp_path,
        BUILD_TIMEOUT_S,
    )
    [wheel] = dist.glob("callbridge-*.whl")
    return wheel


def test_the_built_wheel_serves_a_call_from_a_fresh_virtualenv(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert names >= PACKAGED, PACKAGED - names
    assert not any(name.startswith("tests/") for name in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, INSTALL_TIMEOUT_S)
    where = run(
        [
            str(python),
            "-c",
            "import callbridge, importlib.util as u; print(callbridge.__file__); "
            "print(u.find_spec('pytest') is None and u.find_spec('pjsua2') is None)",
        ],
        tmp_path,
        60,
    ).stdout.split()
    assert where[0].startswith(str(venv)), where  # the installed copy, not the repository's
    assert where[1] == "True"  # serving needs neither the test tools nor the SIP engine

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(ROOT / "examples" / "demo.toml", elsewhere / "callbridge.toml")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                str(venv / "bin" / "callbridge"),
                "serve",
                "--config",
                "callbridge.toml",
                "--port",
                str(port),
            ],
            cwd=elsewhere,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_ready(client, server, log)
            page = client.get("/dashboard")
            assert page.status_code == 200 and "callbridge" in page.text
            details = call_to_the_end(client)
            assert (details["status"], details["total_talk_time"]) == ("completed", 1)
            metrics = client.get("/metrics").text
            families = {f.name for f in text_string_to_metric_families(metrics)}
            assert "callbridge_calls" in families
        assert (elsewhere / "data" / "callbridge.db").is_file()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()[-3000:]
