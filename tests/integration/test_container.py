"""The Dockerfile and compose.yaml, checked without a container engine: every command they run
is a real `callbridge` command, every variable they set is a real setting, ports, volumes and
the database URL agree; then the container's start-up sequence (`callbridge migrate`, then
`callbridge serve`, with the same environment) runs as processes against a fresh PostgreSQL
database and serves a call to its end."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from callbridge.cli import build_parser
from callbridge.settings import Settings

from ..conftest import PG_URL
from ..users.servers import ROOT, free_port, shared_database
from .standalone import call_to_the_end, wait_ready

CALLBRIDGE = Path(sys.executable).parent / "callbridge"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    rows = [line.strip().split(None, 1) for line in text.splitlines()]
    return [(row[0].upper(), " ".join(row[1].split())) for row in rows if row and row[0][0] != "#"]


def dockerfile() -> list[tuple[str, str]]:
    """The final stage: what the image is."""
    every = instructions()
    last_from = max(i for i, (op, _) in enumerate(every) if op == "FROM")
    return every[last_from:]


def one(instructions: list[tuple[str, str]], op: str) -> str:
    [args] = [a for o, a in instructions if o == op]
    return args


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in dockerfile():
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def image_command() -> list[str]:
    stage = dockerfile()
    entrypoint: list[str] = json.loads(one(stage, "ENTRYPOINT"))
    command: list[str] = json.loads(one(stage, "CMD"))
    return entrypoint + command


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def resolved(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing set in the environment."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", value)


def is_setting(name: str) -> bool:
    return name.startswith("CALLBRIDGE_") and name[11:].lower() in Settings.model_fields


def test_the_image_runs_callbridge_serve_as_a_user_with_a_data_volume() -> None:
    stage = dockerfile()
    assert one(stage, "FROM") == "python:3.11-slim"
    user = one(stage, "USER")
    assert user not in ("root", "0")
    assert any(
        "useradd --system --uid 10001" in a and a.split(" && ")[0].endswith(f" {user}")
        for op, a in stage
        if op == "RUN"
    )
    command = image_command()
    assert command[0] == "callbridge"
    assert build_parser().parse_args(command[1:]).command == "serve"
    assert 'callbridge = "callbridge.cli:main"' in (ROOT / "pyproject.toml").read_text()
    env = image_env()
    settings = {k: v for k, v in env.items() if k.startswith("CALLBRIDGE_")}
    assert settings and all(is_setting(k) for k in settings), settings
    assert json.loads(one(stage, "VOLUME")) == [env["CALLBRIDGE_DATA_DIR"]]
    assert one(stage, "WORKDIR") == env["CALLBRIDGE_DATA_DIR"]
    assert one(stage, "EXPOSE") == env["CALLBRIDGE_PORT"]
    health = one(stage, "HEALTHCHECK")
    assert "/healthz" in health and "CALLBRIDGE_PORT" in health
    # What the build stage copies exists here.
    for op, args in instructions():
        if op == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_compose_wires_callbridge_to_its_postgresql() -> None:
    services = compose()["services"]
    db, migrate, server = services["db"], services["migrate"], services["callbridge"]
    assert server["build"] == migrate["build"] == "."
    assert (ROOT / server["build"] / "Dockerfile").is_file()
    for service in (migrate, server):
        parsed = build_parser().parse_args(service["command"])
        assert parsed.command == service["command"][0]
        assert all(is_setting(name) for name in service["environment"]), service["environment"]
    assert server["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"

    url = make_url(resolved(server["environment"]["CALLBRIDGE_DATABASE_URL"]))
    db_env = {k: resolved(v) for k, v in db["environment"].items()}
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port) == ("db", 5432)
    assert (url.username, url.password, url.database) == (
        db_env["POSTGRES_USER"],
        db_env["POSTGRES_PASSWORD"],
        db_env["POSTGRES_DB"],
    )
    env = image_env()
    [published] = server["ports"]
    assert published.rsplit(":", 1)[1] == env["CALLBRIDGE_PORT"]
    mounts = dict(volume.split(":")[1::-1] for volume in server["volumes"])
    assert mounts[env["CALLBRIDGE_DATA_DIR"]] == "callbridge-data"
    config_source = mounts[server["environment"]["CALLBRIDGE_CONFIG"]]
    assert (ROOT / config_source).is_file()
    assert set(compose()["volumes"]) == {"db-data", "callbridge-data"}


@pytest.fixture
def fresh_postgres(tmp_path: Path) -> Iterator[str]:
    """An empty PostgreSQL database (not migrated: the start-up sequence does that)."""
    if PG_URL is None:
        pytest.skip("needs CALLBRIDGE_TEST_DATABASE_URL")
    with shared_database("postgresql", tmp_path, migrated=False) as url:
        yield url


def container_env(database_url: str, data_dir: Path, port: int) -> dict[str, str]:
    """The image's and the compose service's environment, pointed at this machine: the
    database at the test's PostgreSQL, the config at the file compose mounts, and the
    listener at 127.0.0.1 (tests never listen beyond loopback)."""
    server = compose()["services"]["callbridge"]
    env = {**image_env(), **{k: resolved(v) for k, v in server["environment"].items()}}
    mounts = dict(volume.split(":")[1::-1] for volume in server["volumes"])
    env |= {
        "CALLBRIDGE_DATABASE_URL": database_url,
        "CALLBRIDGE_CONFIG": str(ROOT / mounts[env["CALLBRIDGE_CONFIG"]]),
        "CALLBRIDGE_DATA_DIR": str(data_dir),
        "CALLBRIDGE_HOST": "127.0.0.1",
        "CALLBRIDGE_PORT": str(port),
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    return clean | env


def test_the_start_up_sequence_serves_a_call_on_a_fresh_database(
    tmp_path: Path, fresh_postgres: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    env = container_env(fresh_postgres, data, port)
    migrate = run([str(CALLBRIDGE), *compose()["services"]["migrate"]["command"]], data, env)
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stdout.strip() == "database is up to date"

    log = tmp_path / "serve.log"
    server = start(["callbridge", *image_command()[1:]], data, env, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_ready(client, server, log)
            probe = run([sys.executable, *_healthcheck_command()[1:]], data, env)
            assert probe.returncode == 0, probe.stderr
            assert call_to_the_end(client)["status"] == "completed"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def start(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`callbridge …` as the image runs it, from this environment's scripts directory."""
    assert argv[0] == "callbridge"
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(CALLBRIDGE), *argv[1:]], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _healthcheck_command() -> list[str]:
    health = one(dockerfile(), "HEALTHCHECK")
    command: list[str] = json.loads(health.split("CMD", 1)[1])
    assert command[0] == "python"
    return command
