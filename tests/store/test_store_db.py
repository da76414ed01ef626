"""Engine factory: SQLite pragmas, aware timestamps, JSON round trips on both databases."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text

from app.store.db import Database, check_sqlite_file, create_engine, ping
from app.store.models import Call
from app.store.repositories import CallRepository


async def test_sqlite_connections_get_wal_foreign_keys_and_busy_timeout(
    database: Database, database_backend: str
) -> None:
    if database_backend != "sqlite":
        pytest.skip("SQLite pragmas")
    async with database.engine.connect() as connection:
        journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
        foreign_keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one()
        busy = (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one()
    assert journal == "wal"
    assert foreign_keys == 1
    assert busy == 5000


async def test_ping_succeeds_on_a_live_database(database: Database) -> None:
    await database.ping()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_ping_fails_when_the_server_is_unreachable() -> None:
    # PostgreSQL URL on a closed loopback port: refused at once. (A SQLite file that
    # cannot be opened would do too, but aiosqlite then leaves a worker thread that
    # may outlive the test's event loop.)
    engine = create_engine(f"postgresql+asyncpg://u@127.0.0.1:{_closed_port()}/db")
    try:
        with pytest.raises(OSError, match="Connect call failed"):
            await ping(engine)
    finally:
        await engine.dispose()


async def test_timestamps_come_back_aware_in_utc(
    database: Database, call_factory: Callable[..., Call]
) -> None:
    paris_summer = timezone(timedelta(hours=2))
    moment = datetime(2026, 7, 1, 12, 0, 0, 123456, tzinfo=paris_summer)
    async with database.session() as session:
        await CallRepository(session).add(call_factory(id="call_tz", created_at=moment))
        await session.commit()
    async with database.session() as session:
        loaded = (await session.execute(select(Call).where(Call.id == "call_tz"))).scalar_one()
    assert loaded.created_at == moment
    assert loaded.created_at.tzinfo is not None
    assert loaded.created_at.utcoffset() == timedelta(0)
    assert loaded.created_at.hour == 10


async def test_naive_datetimes_are_refused(
    database: Database, call_factory: Callable[..., Call]
) -> None:
    async with database.session() as session:
        with pytest.raises(Exception, match="naive datetime"):
            await CallRepository(session).add(
                call_factory(created_at=datetime(2026, 1, 1, 0, 0))
            )


async def test_json_columns_round_trip(
    database: Database, call_factory: Callable[..., Call]
) -> None:
    headers = {"Via": ["SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", "SIP/2.0/UDP h2"], "X-É": ["ü"]}
    routes = ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    async with database.session() as session:
        call = call_factory(
            id="call_json", direction="inbound", request_headers=headers, route_set=routes
        )
        await CallRepository(session).add(call)
        await session.commit()
    async with database.session() as session:
        loaded = await CallRepository(session).get("call_json")
    assert loaded is not None
    assert loaded.request_headers == headers
    assert loaded.route_set == routes


async def test_new_sessions_see_committed_rows_only(
    database: Database, call_factory: Callable[..., Call]
) -> None:
    async with database.session() as writer:
        await CallRepository(writer).add(call_factory(id="call_uncommitted"))
        async with database.session() as reader:
            assert await CallRepository(reader).get("call_uncommitted") is None
        await writer.rollback()
    async with database.session() as reader:
        assert await CallRepository(reader).get("call_uncommitted") is None


def test_check_sqlite_file_creates_or_refuses(tmp_path: Path) -> None:
    target = tmp_path / "new.db"
    check_sqlite_file(f"sqlite+aiosqlite:///{target}")
    assert target.exists()
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        check_sqlite_file(f"sqlite+aiosqlite:///{tmp_path}/missing/x.db")
    check_sqlite_file("postgresql+asyncpg://u@127.0.0.1:1/db")  # not SQLite: untouched
