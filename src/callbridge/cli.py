"""The `callbridge` command: serve, migrate, worker, accounts, callbacks, listen."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from callbridge.settings import Settings

if TYPE_CHECKING:
    from callbridge.config import Config
    from callbridge.config_sim import SimNumberConfig

KEEP_ALIVE_S = 75
"""How long an idle client connection is kept open."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("config", "host", "port", "database_url", "driver", "data_dir", "log_level"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "allow_private_urls", False):
        overrides["allow_private_urls"] = True
    return Settings(**overrides)


def _common(parser: argparse.ArgumentParser, *, leaf: bool = False) -> None:
    """The options every command takes. On a leaf command (`accounts webhook-secret …`) they
    may also come after it; SUPPRESS keeps a leaf from erasing what its parent parsed."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if leaf else {}
    parser.add_argument("--config", type=Path, help="TOML config file applied at start", **extra)
    parser.add_argument(
        "--database-url", help="SQLAlchemy URL (default: SQLite under ./data)", **extra
    )
    parser.add_argument("--data-dir", type=Path, help="where SQLite and recordings live", **extra)
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR", **extra)


def _delivery_id(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 2**63 - 1:
        raise ValueError(raw)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callbridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server and call engine")
    _common(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--driver", choices=["sim", "sip"])
    serve.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let callback, audio and stream URLs point at loopback/private networks",
    )

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    _common(migrate)

    worker = sub.add_parser("worker", help="run only the status-callback delivery worker")
    _common(worker)
    worker.add_argument("--allow-private-urls", action="store_true")

    accounts = sub.add_parser("accounts", help="account administration")
    _common(accounts)
    acc_sub = accounts.add_subparsers(dest="accounts_command", required=True)
    secret = acc_sub.add_parser("webhook-secret", help="show or rotate an account's webhook secret")
    _common(secret, leaf=True)
    secret.add_argument("account_sid")
    secret.add_argument("--rotate", action="store_true")

    callbacks = sub.add_parser("callbacks", help="status-callback deliveries")
    _common(callbacks)
    cb_sub = callbacks.add_subparsers(dest="callbacks_command", required=True)
    replay = cb_sub.add_parser("replay", help="re-send one delivery")
    _common(replay, leaf=True)
    replay.add_argument("account_sid")
    replay.add_argument("delivery_id", type=_delivery_id)

    listen = sub.add_parser(
        "listen", help="print status callbacks sent to this machine and check their signatures"
    )
    _common(listen)
    listen.add_argument("--host", dest="listen_host", default="127.0.0.1")
    listen.add_argument("--port", dest="listen_port", type=int, default=9000)
    source = listen.add_mutually_exclusive_group()
    source.add_argument("--secret", help="the account's webhook secret (whsec_…)")
    source.add_argument("--account", help="read the secret of this account from the database")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from callbridge.logs import configure_logging

    try:
        settings = _settings(args)
        configure_logging(settings.log_level, json_lines=settings.log_json)
    except ValidationError as exc:
        return _fail(_setting_error(exc), 2)
    except ValueError as exc:  # an unknown log level
        return _fail(f"invalid setting log_level: {exc}", 2)
    if settings.config is not None and not settings.config.is_file():
        return _fail(f"config file not found: {settings.config}", 2)
    if args.command == "serve":
        return _serve(settings)
    if args.command == "listen":
        return _listen(args, settings)
    if args.command == "migrate":
        from callbridge.store.repo import describe_db_error
        from callbridge.store.schema import upgrade_to_head

        try:
            upgrade_to_head(settings.resolved_database_url())
        except Exception as exc:
            return _fail(f"cannot migrate the database: {describe_db_error(exc)}", 1)
        print("database is up to date")
        return 0
    from callbridge.admin import run as run_admin
    from callbridge.store.repo import describe_db_error

    missing = _missing_sqlite_file(settings)
    if missing is not None:
        # An admin command never creates a database: a wrong --data-dir is an error.
        return _fail(f"no database at {missing} (run `callbridge migrate` or check --data-dir)", 1)
    try:
        return asyncio.run(run_admin(args, settings))
    except Exception as exc:
        return _fail(f"cannot reach the database: {describe_db_error(exc)}", 1)


def _listen(args: argparse.Namespace, settings: Settings) -> int:
    from callbridge.listen import ListenError, serve
    from callbridge.webhooks.signing import InvalidSecret, secret_key

    if not 0 <= args.listen_port <= 65535:
        return _fail(f"invalid port {args.listen_port}", 2)
    secrets: list[str] = []
    origin: str | None = None
    if args.secret is not None:
        try:
            secret_key(args.secret)
        except InvalidSecret as exc:
            return _fail(f"--secret: {exc}", 2)
        secrets, origin = [args.secret], "the given secret"
    elif args.account is not None:
        missing = _missing_sqlite_file(settings)
        if missing is not None:
            return _fail(f"no database at {missing} (pass --data-dir or --secret)", 1)
        from callbridge.admin import account_secrets
        from callbridge.store.repo import describe_db_error

        try:
            secrets = asyncio.run(account_secrets(settings, args.account))
        except Exception as exc:
            return _fail(f"cannot reach the database: {describe_db_error(exc)}", 1)
        if not secrets:
            return _fail(f"account {args.account} not found", 1)
        origin = f"the webhook secret of account {args.account}"
    try:
        return serve(args.listen_host, args.listen_port, secrets, origin, sys.stdout)
    except ListenError as exc:
        return _fail(str(exc), 1)


def _missing_sqlite_file(settings: Settings) -> Path | None:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(settings.resolved_database_url())
    except Exception:
        return None  # reported when the command connects
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = Path(url.database)
    return None if path.exists() else path


def _fail(message: str, code: int) -> int:
    print(f"callbridge: {message}", file=sys.stderr)
    return code


def _setting_error(exc: Any) -> str:
    """`invalid setting port: Input should be a valid integer` from pydantic's error."""
    first = exc.errors()[0]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    name = ".".join(str(part) for part in first.get("loc", ()))
    return f"invalid setting {name}: {message}" if name else f"invalid settings: {message}"


async def _apply_config_first(settings: Settings) -> Config | None:
    """Apply the config file before serving, so that an error in it (a flow naming a user
    that does not exist…) stops the start with its message; returns it, applied. None when
    the database cannot be reached: the server then waits for it (503 on /readyz) and
    applies the file itself."""
    from callbridge.clock import SystemClock
    from callbridge.config import apply_config, load_config
    from callbridge.store.repo import Store
    from callbridge.store.schema import ensure_schema

    assert settings.config is not None
    config = load_config(settings.config, default_rate_limit=settings.default_rate_limit_per_minute)
    store = Store(settings.resolved_database_url())
    try:
        try:
            await ensure_schema(store)
        except Exception:
            return None
        await apply_config(store, config, SystemClock(), sip_realm=settings.sip_registrar_realm)
        return config
    finally:
        await store.close()


def _serve(settings: Settings) -> int:
    import uvicorn

    from callbridge.api.app import create_app
    from callbridge.config import ConfigError
    from callbridge.uvicorn_server import Server as CleanExitServer

    sim_numbers: tuple[SimNumberConfig, ...] = ()
    if settings.config is not None:
        try:
            applied = asyncio.run(_apply_config_first(settings))
            if applied is not None:
                # Applied: the server need not parse and apply it a second time; the phones
                # of the simulated carrier it names only exist once the server runs.
                settings = settings.model_copy(update={"config": None})
                sim_numbers = applied.sim_numbers
        except ConfigError as exc:
            return _fail(str(exc), 2)
        except Exception as exc:  # e.g. an api_key the database already gives another account
            from callbridge.store.repo import describe_db_error

            return _fail(f"config cannot be applied: {describe_db_error(exc)}", 2)
    from callbridge.api.dashboard_routes import close_live_streams

    app = create_app(settings, sim_numbers=sim_numbers)

    class Server(CleanExitServer):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # Open dashboard streams would otherwise hold the graceful stop for its timeout.
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon_threadsafe(close_live_streams, app)

    Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            server_header=False,
            # Longer than common client pools keep idle connections (httpx: 5 s, which is
            # uvicorn's default too), so a pooled request never races the server's close.
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=10,
        )
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
