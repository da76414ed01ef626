"""Migrations and models agree, on SQLite and (with CALLCTL_TEST_DATABASE_URL) PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from app.store.db import create_engine
from app.store.migrate import (
    MIGRATIONS_DIR,
    current_revision,
    downgrade,
    head_revision,
    schema_differences,
    upgrade,
)
from app.store.models import Base

REPO = Path(__file__).resolve().parents[1]


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_upgrade_from_empty_matches_the_models(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        assert await current_revision(engine) is None
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        assert await schema_differences(engine) == []
        async with engine.connect() as connection:
            tables = await connection.run_sync(_tables)
        assert set(Base.metadata.tables) <= tables
    finally:
        await engine.dispose()


async def test_the_comparison_notices_a_drift(database_url: str) -> None:
    """The check above could fail: a column the models lack is reported."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE calls ADD COLUMN stray INTEGER"))
        differences = await schema_differences(engine)
    finally:
        await engine.dispose()
    assert [d[0] for d in differences] == ["remove_column"]
    assert differences[0][3].name == "stray"


async def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        assert await schema_differences(engine) == []
    finally:
        await engine.dispose()


async def test_downgrade_to_base_and_back(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await downgrade(engine, "base")
        async with engine.connect() as connection:
            left = await connection.run_sync(_tables)
        assert left & set(Base.metadata.tables) == set()
        await upgrade(engine)
        assert await schema_differences(engine) == []
    finally:
        await engine.dispose()


def test_alembic_ini_points_at_the_same_scripts() -> None:
    config = Config(str(REPO / "alembic.ini"))
    scripts = ScriptDirectory.from_config(config)
    assert Path(scripts.dir).resolve() == MIGRATIONS_DIR
    assert scripts.get_current_head() == head_revision()


def test_revisions_form_one_line_with_downgrades() -> None:
    scripts = ScriptDirectory(str(MIGRATIONS_DIR))
    assert len(scripts.get_heads()) == 1
    for revision in scripts.walk_revisions():
        assert revision.module.downgrade is not None
        assert revision.doc, f"revision {revision.revision} has no description"
