"""app.store.bulk.executemany: what reaches SQLite is what connection.execute sends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    insert,
    select,
    text,
    update,
)

from app.store import bulk
from app.store.bulk import executemany
from app.store.types import UTCDateTime, encode_json, json_serializer, json_type

_META = MetaData()
_T = Table(
    "t",
    _META,
    Column("id", String(8), primary_key=True),
    Column("at", UTCDateTime(), nullable=True),
    Column("data", json_type(), nullable=True),
    Column("n", Integer, nullable=False),
)
_D = Table(
    "d",
    _META,
    Column("id", String(8), primary_key=True),
    Column("n", Integer, default=5),  # a Python-side default: SQLAlchemy fills it in
)
_INSERT = insert(_T)
_UPDATE = (
    update(_T).where(_T.c.id == bindparam("k_id")).values(n=bindparam("v_n"), at=bindparam("v_at"))
)
_INSERT_D = insert(_D)

_AT = datetime(2026, 12, 7, 18, 30, 1, 250_000, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'bulk.db'}", json_serializer=json_serializer)
    _META.create_all(engine)
    yield engine
    engine.dispose()


def _rows(i0: int) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i0}", "at": _AT, "data": encode_json({"a": [1, "é"]}), "n": i0},
        {"id": f"r{i0 + 1}", "at": None, "data": {"b": None}, "n": i0 + 1},
        {"id": f"r{i0 + 2}", "at": _AT + timedelta(hours=1), "data": None, "n": i0 + 2},
    ]


def _raw(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text(f"SELECT * FROM {table} ORDER BY rowid"))]


def test_inserts_store_the_same_text_as_connection_execute(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(_INSERT, _rows(0))
    with engine.begin() as connection:
        assert executemany(connection, _INSERT, _rows(10)) == 3
    stored = _raw(engine, "t")
    by_execute, by_bulk = stored[:3], stored[3:]
    # Row for row the same stored values, but for the id and n.
    assert [r[1:3] for r in by_bulk] == [r[1:3] for r in by_execute]
    assert by_bulk[0][1] == "2026-12-07 18:30:01.250000"
    assert by_bulk[0][2] == '{"a":[1,"é"]}'
    assert by_bulk[1][1:3] == (None, '{"b": null}')
    assert by_bulk[2][2] is None  # JSON None is SQL NULL
    # And they read back through SQLAlchemy as what was written.
    with engine.connect() as connection:
        back = connection.execute(select(_T).where(_T.c.id == "r10")).one()
    assert back.at == _AT and back.data == {"a": [1, "é"]}


def test_an_update_reports_the_rows_it_changed(engine: Engine) -> None:
    with engine.begin() as connection:
        executemany(connection, _INSERT, _rows(0))
    later = _AT + timedelta(days=1)
    with engine.begin() as connection:
        changed = executemany(
            connection,
            _UPDATE,
            [
                {"k_id": "r0", "v_n": 40, "v_at": later},
                {"k_id": "r2", "v_n": 42, "v_at": None},
                {"k_id": "nope", "v_n": 0, "v_at": later},
            ],
        )
    assert changed == 2
    with engine.connect() as connection:
        got = {r.id: (r.n, r.at) for r in connection.execute(select(_T))}
    assert got == {"r0": (40, later), "r1": (1, None), "r2": (42, None)}


def test_it_is_part_of_the_caller_s_transaction(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as connection:
        executemany(connection, _INSERT, _rows(0))
        raise RuntimeError("roll back")
    assert _raw(engine, "t") == []


def test_python_side_defaults_go_through_sqlalchemy(engine: Engine) -> None:
    with engine.begin() as connection:
        assert executemany(connection, _INSERT_D, [{"id": "a"}, {"id": "b"}]) == 2
        # With the defaulted column given, the plain path is taken.
        assert executemany(connection, _INSERT_D, [{"id": "c", "n": 7}]) == 1
    assert _raw(engine, "d") == [("a", 5), ("b", 5), ("c", 7)]
    assert bulk._plans[(_INSERT_D, ("id",))] is None
    assert bulk._plans[(_INSERT_D, ("id", "n"))] is not None


def test_no_rows_is_nothing(engine: Engine) -> None:
    with engine.begin() as connection:
        assert executemany(connection, _INSERT, []) == 0
