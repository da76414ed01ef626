"""Engine and session factories (no module globals: the composition root owns them)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

# How long to wait for PostgreSQL to accept a connection before reporting it unreachable.
CONNECT_TIMEOUT_S = 10.0
# How long a SQLite writer waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000
# SQLite takes one writer at a time. With the default pool (5 + 10 overflow), a second
# writer met SQLITE_BUSY and its busy handler *slept* (1, 2, 5, ... 100 ms steps) in its
# aiosqlite thread, and overflow connections (one thread + open + pragmas each) were made
# and closed per use: hundreds of ms of INVITE->200 under load with the CPU idle. Two fixed
# connections (the call writer's group commit and one more, e.g. the webhook dispatcher or
# a nested read), no overflow: other sessions wait their turn on the pool (an asyncio wait)
# instead. Measured at 40 cps inbound: p50 INVITE->200 from ~300-600 ms to ~17 ms.
# Do not nest more than two sessions: a third waits for SQLITE_POOL_TIMEOUT_S, then fails.
SQLITE_POOL_SIZE = 2
# How long a session waits for that connection before failing (a stuck transaction).
SQLITE_POOL_TIMEOUT_S = 30.0
# PostgreSQL: enough connections for the call writer, the webhook dispatcher's deliveries
# and the API together, so that overflow connections are not opened and closed per use.
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 20


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    """WAL (readers never block the writer), foreign keys enforced, wait on locks."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine for ``sqlite+aiosqlite`` or ``postgresql+asyncpg`` URLs."""
    backend = make_url(url).get_backend_name()
    kwargs: dict[str, Any] = {"echo": echo}
    if backend == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            kwargs.update(
                pool_size=SQLITE_POOL_SIZE, max_overflow=0, pool_timeout=SQLITE_POOL_TIMEOUT_S
            )
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    kwargs["pool_pre_ping"] = True
    kwargs.update(pool_size=PG_POOL_SIZE, max_overflow=PG_MAX_OVERFLOW)
    kwargs["connect_args"] = {"timeout": CONNECT_TIMEOUT_S}
    return create_async_engine(url, **kwargs)


def check_sqlite_file(url: str) -> None:
    """Open (creating it if needed) the SQLite file of ``url`` with the standard driver.

    Raises ``sqlite3.Error`` ("unable to open database file") when it cannot be opened.
    Used before a short-lived event loop touches the file: when aiosqlite fails to
    connect, its worker thread may report back after the loop is closed and print a
    traceback. Other URLs are left alone.
    """
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    sqlite3.connect(database).close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no implicit refresh I/O)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def ping(engine: AsyncEngine) -> None:
    """Raise when the database cannot answer a trivial query."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


@dataclass(frozen=True, slots=True, kw_only=True, weakref_slot=True)
class Database:
    """The engine and its session factory, built together and disposed together.

    Weakly referenceable: ``app.calls.writer`` keeps its group writer per database.
    """

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]

    @classmethod
    def from_url(cls, url: str, *, echo: bool = False) -> Database:
        engine = create_engine(url, echo=echo)
        return cls(engine=engine, sessionmaker=create_sessionmaker(engine))

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session

    async def ping(self) -> None:
        await ping(self.engine)

    async def dispose(self) -> None:
        await self.engine.dispose()
