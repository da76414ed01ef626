"""The callctl command: help generated from the settings, clear failures, serve and stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.openapi import openapi_yaml
from app.cli import build_parser, format_default, main, settings_help, settings_markdown
from app.main import create_app
from app.settings import PortRange, Settings, field_env_name
from app.store.migrate import head_revision

REPO = Path(__file__).resolve().parents[1]
# Bounds for the subprocess tests: generous, since CI machines can be slow; never slept
# through when the server is quicker.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- help --------------------------------------------------------------------------------------


def test_help_lists_every_setting_with_default_and_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "migrate", "openapi"):
        assert command in out
    flat = " ".join(out.split())
    for name, field in Settings.model_fields.items():
        line = f"{field_env_name(name)} (default: {format_default(field.default)})"
        assert line in flat, line
        assert " ".join((field.description or "").split()) in flat, name


def test_help_shows_defaults_as_written_in_the_environment() -> None:
    text = " ".join(settings_help().split())
    assert "CALLCTL_DATABASE_URL (default: sqlite+aiosqlite:///./callctl.db)" in text
    assert "CALLCTL_SIP_TRANSPORTS (default: udp,tcp)" in text
    assert "CALLCTL_RTP_PORTS (default: 20000-20999)" in text
    assert "CALLCTL_AUTO_PROVISIONAL (default: true)" in text
    assert "CALLCTL_INBOUND_TIMEOUT (default: 60)" in text
    assert "CALLCTL_INBOUND_ALLOW (default: 0.0.0.0/0,::/0)" in text
    assert "CALLCTL_API_KEYS (default: empty)" in text
    assert "CALLCTL_PUBLIC_ADDRESS (default: unset)" in text
    assert format_default(PortRange(low=1024, high=1025)) == "1024-1025"


def test_subcommand_help_lists_the_settings_too() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert "CALLCTL_HTTP_PORT" in result.stdout


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args([])
    assert caught.value.code == 2


# -- failures: one line, no traceback ------------------------------------------------------------


def assert_one_line(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("callctl: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("command", ["serve", "migrate", "openapi"])
def test_invalid_settings_exit_2_with_one_line(command: str) -> None:
    result = run_cli(command, env={"CALLCTL_HTTP_PORT": "http"})
    assert result.returncode == 2
    assert_one_line(result.stderr, "invalid settings", "CALLCTL_HTTP_PORT")


@pytest.mark.parametrize(
    "url", ["mysql://db.example.com/x", "not a url", "postgresql+asyncpg://127.0.0.1"]
)
def test_bad_database_url_exits_2_with_one_line(url: str) -> None:
    result = run_cli("serve", env={"CALLCTL_DATABASE_URL": url})
    assert result.returncode == 2
    assert_one_line(result.stderr, "CALLCTL_DATABASE_URL")


def test_unreachable_postgresql_exits_1_with_one_line() -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://callctl:pw@127.0.0.1:{port}/callctl"
    result = run_cli("serve", env={"CALLCTL_DATABASE_URL": url})
    assert result.returncode == 1
    assert_one_line(result.stderr, "unavailable", f"callctl:***@127.0.0.1:{port}/callctl")
    assert ":pw@" not in result.stderr


def test_sqlite_file_that_cannot_be_opened_exits_1(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/missing-dir/callctl.db"
    result = run_cli("migrate", env={"CALLCTL_DATABASE_URL": url})
    assert result.returncode == 1
    assert_one_line(result.stderr, "unable to open database file")


# -- commands that succeed ---------------------------------------------------------------------


def test_migrate_brings_an_empty_database_to_head(empty_database_url: str) -> None:
    result = run_cli("migrate", env={"CALLCTL_DATABASE_URL": empty_database_url})
    assert result.returncode == 0, result.stderr
    assert f"is at revision {head_revision()}" in result.stdout
    again = run_cli("migrate", env={"CALLCTL_DATABASE_URL": empty_database_url})
    assert again.returncode == 0, again.stderr


def test_openapi_prints_the_document(settings: Settings) -> None:
    result = run_cli("openapi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == openapi_yaml(create_app(settings).openapi())


# -- serve ---------------------------------------------------------------------------------------


@pytest.fixture
def served(empty_database_url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`callctl serve` on free ports; always stopped (SIGKILL if SIGTERM was not enough)."""
    port = free_port()
    env = {
        **os.environ,
        "CALLCTL_DATABASE_URL": empty_database_url,
        "CALLCTL_HTTP_PORT": str(port),
        "CALLCTL_SIP_PORT": str(free_port()),
        "CALLCTL_API_KEYS": "k",
        "CALLCTL_DRAIN_SECONDS": "5",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=STOP_TIMEOUT_S)


def wait_healthy(process: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"callctl serve exited early with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"callctl serve did not answer /healthz within {START_TIMEOUT_S}s")


def test_serve_migrates_answers_and_stops_cleanly_on_sigterm(
    served: tuple[subprocess.Popen[str], str],
) -> None:
    process, base = served
    wait_healthy(process, base)

    assert httpx.get(f"{base}/readyz", timeout=5).json()["status"] == "ready"
    denied = httpx.get(f"{base}/v1/calls", timeout=5)
    assert denied.status_code == 401
    assert denied.headers["content-type"] == "application/problem+json"
    allowed = httpx.get(f"{base}/v1/calls", headers={"Authorization": "Bearer k"}, timeout=5)
    assert allowed.status_code == 200
    assert allowed.json() == {"data": [], "next_cursor": None}

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "Application shutdown complete" in stderr


def test_serve_exits_non_zero_when_the_port_is_taken(empty_database_url: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(
            "serve",
            env={"CALLCTL_DATABASE_URL": empty_database_url, "CALLCTL_HTTP_PORT": str(port)},
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


# -- README --------------------------------------------------------------------------------------


def test_readme_settings_table_matches_the_model() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert settings_markdown() in readme, (
        "README settings table is stale: paste the output of "
        "`.venv/bin/python -c 'from app.cli import settings_markdown; print(settings_markdown())'`"
    )


def test_readme_commands_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "./run serve" in readme
    assert "./run test" in readme
    script = (REPO / "run").read_text(encoding="utf-8")
    for command in ("serve | migrate)", "test)", "lint)", "openapi)"):
        assert command in script
