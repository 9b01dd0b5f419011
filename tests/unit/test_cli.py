"""The `callbridge` command line as users run it: a real process per command. Every mistake
is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CALLBRIDGE = Path(sys.executable).parent / "callbridge"


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    return subprocess.run(
        [str(CALLBRIDGE), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("callbridge")]
    assert any(text in line for line in lines), result.stderr


@pytest.fixture
def database(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert run("migrate", "--data-dir", str(data), cwd=tmp_path).returncode == 0
    return data


def test_admin_options_may_follow_the_subcommand(tmp_path: Path, database: Path) -> None:
    first = run("accounts", "--data-dir", str(database), "webhook-secret", "acme", cwd=tmp_path)
    after = run("accounts", "webhook-secret", "acme", "--data-dir", str(database), cwd=tmp_path)
    for result in (first, after):
        one_line_error(result, 1, "account acme not found")  # the database was found


def test_admin_command_never_creates_a_database(tmp_path: Path) -> None:
    wrong = tmp_path / "nowhere"
    result = run("accounts", "webhook-secret", "acme", "--data-dir", str(wrong), cwd=tmp_path)
    one_line_error(result, 1, "no database at")
    assert not wrong.exists()


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://x@127.0.0.1:1/nope"
    one_line_error(
        run("worker", "--database-url", url, cwd=tmp_path), 1, "cannot reach the database"
    )
    one_line_error(
        run("migrate", "--database-url", url, cwd=tmp_path), 1, "cannot migrate the database"
    )
    one_line_error(
        run("accounts", "--database-url", "notaurl", "webhook-secret", "acme", cwd=tmp_path),
        1,
        "cannot reach the database",
    )


def test_bad_settings_and_missing_config_are_one_line(tmp_path: Path) -> None:
    one_line_error(
        run("serve", env={"CALLBRIDGE_PORT": "abc"}, cwd=tmp_path), 2, "invalid setting port"
    )
    one_line_error(
        run(
            "serve",
            env={"CALLBRIDGE_LEASE_TTL_S": "1", "CALLBRIDGE_HEARTBEAT_INTERVAL_S": "2"},
            cwd=tmp_path,
        ),
        2,
        "invalid settings: lease_ttl_s must be at least twice heartbeat_interval_s",
    )
    one_line_error(
        run("serve", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path),
        2,
        "config file not found",
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("accounts = 5\n")
    one_line_error(run("serve", "--config", str(bad), cwd=tmp_path), 2, "accounts")


def test_a_config_error_found_while_applying_it_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "flows.toml"
    config.write_text(
        '[[accounts]]\nsid = "acme"\napi_key = "k"\napi_token = "t"\n'
        'exophones = ["+912241499102"]\n\n[[accounts.flows]]\nname = "support"\n'
        'connect = { destinations = [{ user_id = "nobody" }] }\n'
    )
    result = run(
        "serve", "--config", str(config), "--data-dir", str(tmp_path / "data"), cwd=tmp_path
    )
    one_line_error(result, 2, "destinations.0.user_id: no such user")


def test_a_delivery_id_out_of_range_is_a_usage_error(tmp_path: Path, database: Path) -> None:
    result = run(
        "callbacks",
        "replay",
        "acme",
        "99999999999999999999",
        "--data-dir",
        str(database),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "delivery_id" in result.stderr
    assert "Traceback" not in result.stderr
