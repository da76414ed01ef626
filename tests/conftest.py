"""Fixtures every test may use: clean environment, settings, a database per test, the app.

Database: SQLite in a temporary file by default. With ``CALLCTL_TEST_DATABASE_URL``
(e.g. ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``) each test gets its own
PostgreSQL database, copied from a template migrated once per session; every database
this session made is dropped at the end (the one named in the URL is only used to
connect). Sub-folders add their own conftest.py for their own needs.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.main import create_app
from app.settings import ENV_PREFIX, Settings, normalize_database_url
from app.store.db import Database, create_engine
from app.store.ids import new_call_id
from app.store.migrate import upgrade
from app.store.models import Call, CallState, Direction
from app.store.types import utcnow

TEST_DATABASE_ENV = "CALLCTL_TEST_DATABASE_URL"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class TestDatabases:
    """Makes and drops the databases of one test session."""

    def __init__(self, tmp_dir: Path, server_url: str | None) -> None:
        self.tmp_dir = tmp_dir
        self.server_url = normalize_database_url(server_url) if server_url else None
        self.backend = "postgresql" if self.server_url else "sqlite"
        self.prefix = f"callctl_t{secrets.token_hex(3)}_"
        self._made: list[str] = []
        self._template: str | None = None
        self._counter = 0

    def _name(self) -> str:
        self._counter += 1
        return f"{self.prefix}{self._counter}"

    async def _admin(self, *statements: str) -> None:
        assert self.server_url is not None
        engine = create_engine(self.server_url)
        try:
            # CREATE/DROP DATABASE cannot run inside a transaction.
            async with engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                for statement in statements:
                    await autocommit.execute(text(statement))
        finally:
            await engine.dispose()

    def _url_for(self, name: str) -> str:
        if self.server_url is None:
            return f"sqlite+aiosqlite:///{self.tmp_dir / (name + '.db')}"
        url = make_url(self.server_url).set(database=name)
        return url.render_as_string(hide_password=False)

    def empty(self) -> str:
        """A new database with no tables."""
        name = self._name()
        if self.server_url is not None:
            asyncio.run(self._admin(f"CREATE DATABASE {_quote(name)}"))
            self._made.append(name)
        return self._url_for(name)

    def _migrated_template(self) -> str:
        if self._template is None:
            url = self.empty()
            asyncio.run(_migrate(url))
            self._template = url
        return self._template

    def migrated(self) -> str:
        """A new database at the newest migration."""
        template = self._migrated_template()
        name = self._name()
        if self.server_url is None:
            source = make_url(template).database
            assert source is not None
            shutil.copyfile(source, self.tmp_dir / (name + ".db"))
        else:
            template_name = make_url(template).database
            assert template_name is not None
            asyncio.run(
                self._admin(f"CREATE DATABASE {_quote(name)} TEMPLATE {_quote(template_name)}")
            )
            self._made.append(name)
        return self._url_for(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        if name is None:
            return
        if self.server_url is None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(name + suffix).unlink(missing_ok=True)
            return
        if name in self._made:
            asyncio.run(self._admin(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)"))
            self._made.remove(name)

    def drop_all(self) -> None:
        if self.server_url is not None and self._made:
            asyncio.run(
                self._admin(
                    *(f"DROP DATABASE IF EXISTS {_quote(n)} WITH (FORCE)" for n in self._made)
                )
            )
            self._made.clear()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


# -- environment -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_callctl_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CALLCTL_* variable of the developer's shell leaks into a test (but TEST_ ones)."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX) and not name.upper().startswith(
            ENV_PREFIX + "TEST_"
        ):
            monkeypatch.delenv(name)


# -- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabases]:
    databases = TestDatabases(
        tmp_path_factory.mktemp("databases"), os.environ.get(TEST_DATABASE_ENV) or None
    )
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def database_backend(test_databases: TestDatabases) -> str:
    """'sqlite' or 'postgresql': the database the tests of this session run on."""
    return test_databases.backend


@pytest.fixture
def database_url(test_databases: TestDatabases) -> Iterator[str]:
    """A database of its own for this test, migrated to the newest revision."""
    url = test_databases.migrated()
    yield url
    test_databases.drop(url)


@pytest.fixture
def empty_database_url(test_databases: TestDatabases) -> Iterator[str]:
    """A database of its own for this test, without any table."""
    url = test_databases.empty()
    yield url
    test_databases.drop(url)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """Engine and sessionmaker on this test's database."""
    db = Database.from_url(database_url)
    try:
        yield db
    finally:
        await db.dispose()


# -- settings and app ------------------------------------------------------------------------


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    """Settings on this test's database; keyword arguments override fields."""

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("database_url", database_url)
        return Settings(**overrides)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


# How tests build the app: the full composition, but SIP on a free port (never 5060).
APP_OPTIONS: dict[str, Any] = {"sip_port": 0}

AppRunner = Callable[..., AbstractAsyncContextManager[FastAPI]]


@pytest.fixture
def run_app(make_settings: Callable[..., Settings]) -> AppRunner:
    """``async with run_app(**setting_overrides) as app``: an app with its lifespan running."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[FastAPI]:
        application = create_app(make_settings(**overrides), **APP_OPTIONS)
        async with application.router.lifespan_context(application):
            yield application

    return run


@asynccontextmanager
async def http_client(
    application: FastAPI, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``application`` in-process (no socket)."""
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://callctl.test") as http:
        yield http


@pytest.fixture
async def app(run_app: AppRunner) -> AsyncIterator[FastAPI]:
    """The application on this test's database, lifespan running (stopped after the test)."""
    async with run_app() as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as http:
        yield http


@pytest.fixture
def make_client() -> Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]:
    """``async with make_client(app, raise_app_exceptions=False) as client`` for other apps."""
    return http_client


# -- rows ------------------------------------------------------------------------------------


@pytest.fixture
def call_factory() -> Callable[..., Call]:
    """Builds unsaved Call rows with plausible values; keyword arguments override."""
    counter = 0

    def make(**overrides: Any) -> Call:
        nonlocal counter
        counter += 1
        direction = overrides.get("direction", Direction.OUTBOUND.value)
        created_at: datetime = overrides.pop(
            "created_at", utcnow() + timedelta(microseconds=counter)
        )
        values: dict[str, Any] = {
            "id": new_call_id(),
            "direction": direction,
            "state": CallState.INITIAL.value,
            "from_uri": "sip:alice@example.com",
            "to_uri": f"sip:bob{counter}@example.com",
            "local_uri": "sip:alice@example.com",
            "local_display_name": "Alice",
            "remote_uri": f"sip:bob{counter}@example.com",
            "remote_display_name": None,
            "sip_call_id": f"{secrets.token_hex(8)}@127.0.0.1",
            "local_tag": secrets.token_hex(4),
            "transport": "udp",
            "early_media": False,
            "local_cseq": 1,
            "route_set": [],
            "created_at": created_at,
            "updated_at": created_at,
        }
        if direction == Direction.INBOUND.value:
            values |= {
                "request_uri": "sip:alice@127.0.0.1",
                "request_headers": {"From": ["<sip:bob@example.com>;tag=1"]},
                "request_body": None,
                "request_content_type": None,
                "auto_provisional": True,
            }
        values.update(overrides)
        return Call(**values)

    return make
