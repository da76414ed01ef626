"""The ``callctl`` command: serve, migrate, openapi.

Exit codes: 0 success (also after SIGTERM/SIGINT), 1 the database or the server
failed, 2 invalid settings or usage. Expected failures print one line to stderr,
never a traceback (set CALLCTL_LOG_LEVEL=DEBUG to see the cause chain in the log).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from enum import Enum
from types import FrameType
from typing import Any, Protocol

from pydantic import SecretStr

from app.gc_tuning import tune_for_serving
from app.settings import PortRange, Settings, SettingsError, field_env_name, load_settings

PROG = "callctl"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

logger = logging.getLogger("app.cli")


# -- help ----------------------------------------------------------------------------------


def format_default(value: Any) -> str:
    """A setting's default as one would write it in the environment."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, PortRange):
        return str(value)
    if isinstance(value, tuple | list):
        return ",".join(format_default(item) for item in value) or "empty"
    return str(value)


def settings_help(width: int = 96) -> str:
    """Every setting with its default and description, from the settings model."""
    lines = ["settings (environment variables; lists are comma-separated):"]
    for name, field in Settings.model_fields.items():
        lines.append(f"  {field_env_name(name)}  (default: {format_default(field.default)})")
        lines.extend(
            textwrap.wrap(
                field.description or "",
                width=width,
                initial_indent="      ",
                subsequent_indent="      ",
            )
        )
    return "\n".join(lines)


def settings_markdown() -> str:
    """The README's settings table (tests/test_cli.py keeps the README in step with it)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        default = format_default(field.default)
        shown = f"*{default}*" if default in ("unset", "empty") else f"`{default}`"
        rows.append(f"| `{field_env_name(name)}` | {shown} | {description} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    epilog = settings_help()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="REST-controlled SIP call-control service.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in (
        ("serve", "apply migrations, then serve HTTP (and SIP) in one process"),
        ("migrate", "apply database migrations and exit"),
        ("openapi", "print the OpenAPI document (YAML) to stdout"),
    ):
        commands.add_parser(
            name,
            help=text,
            description=text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    return parser


# -- helpers -------------------------------------------------------------------------------


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return code


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def describe_database_error(exc: BaseException) -> str:
    """The innermost useful reason, on one line."""
    from sqlalchemy.exc import DBAPIError

    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = exc.orig
    text = " ".join(str(cause).split()) or type(cause).__name__
    if isinstance(cause, TimeoutError) and not str(cause):
        text = "timed out"
    return text[:300]


def migrate_or_fail(settings: Settings) -> int:
    from app.store.migrate import head_revision, upgrade_database

    try:
        upgrade_database(settings.database_url)
    except Exception as exc:  # any failure to reach or migrate the database: one line
        logger.debug("migration failed", exc_info=True)
        return fail(
            f"database {safe_url(settings.database_url)} unavailable: "
            f"{describe_database_error(exc)}"
        )
    logger.info("database %s at revision %s", safe_url(settings.database_url), head_revision())
    return EXIT_OK


class _StopSignals:
    """Keep SIGTERM/SIGINT from killing the process after uvicorn's graceful stop.

    Uvicorn catches these signals while serving and re-raises them once it has shut
    down; with these handlers in place the re-raised signal is absorbed and ``serve``
    returns 0, as a supervisor expects from a clean stop.
    """

    def __init__(self) -> None:
        self.received: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self)


class DrainRequester(Protocol):
    """``app.main.ShutdownControl``: starts the graceful drain in the running app."""

    def request(self, on_done: Callable[[], None]) -> bool: ...


def _draining_server(config: Any, shutdown: DrainRequester) -> Any:
    """A uvicorn server whose first SIGTERM/SIGINT drains the calls before it stops.

    Uvicorn would close its listening sockets at once; the drain (API.md, issue 6) needs
    HTTP to keep answering (503 to new calls, actions on live ones) while calls finish.
    So the first signal only starts the drain, and the server stops when it is over; a
    second signal stops it at once (uvicorn's own handling).
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        draining = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.draining and not self.should_exit and shutdown.request(self._drained):
                self.draining = True
                logger.info("signal %d: draining before stopping", sig)
                return
            super().handle_exit(sig, frame)

        def _drained(self) -> None:
            self.should_exit = True

    return DrainingServer(config)


def event_loop_name() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


# -- commands ------------------------------------------------------------------------------


def cmd_serve(settings: Settings) -> int:
    import uvicorn

    from app.main import create_app

    code = migrate_or_fail(settings)
    if code != EXIT_OK:
        return code
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop=event_loop_name(),
        lifespan="on",
        log_config=None,  # our root handler (app.logging) formats uvicorn's lines too
        access_log=settings.log_level == "DEBUG",
        server_header=False,
        timeout_graceful_shutdown=max(1, math.ceil(settings.drain_seconds)),
    )
    server = _draining_server(config, app.state.shutdown)
    config.load()  # uvicorn's protocol and loop modules: imported before the freeze
    tune_for_serving()
    _StopSignals().install()
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when start-up fails (port taken, ...)
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    if not server.started:
        return fail("the server did not start (see the log above)")
    return EXIT_OK


def cmd_migrate(settings: Settings) -> int:
    code = migrate_or_fail(settings)
    if code == EXIT_OK:
        from app.store.migrate import head_revision

        print(f"database {safe_url(settings.database_url)} is at revision {head_revision()}")
    return code


def cmd_openapi(settings: Settings) -> int:
    from app.api.openapi import openapi_yaml
    from app.main import create_app

    sys.stdout.write(openapi_yaml(create_app(settings).openapi()))
    return EXIT_OK


COMMANDS = {"serve": cmd_serve, "migrate": cmd_migrate, "openapi": cmd_openapi}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        return fail(f"invalid settings: {exc}", EXIT_USAGE)

    from app.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        return COMMANDS[args.command](settings)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
