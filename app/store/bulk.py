"""``executemany`` of Core statements on SQLite without SQLAlchemy's per-execution work.

``connection.execute(statement, rows)`` makes SQLAlchemy look the statement up in its
compiled cache (building a cache key each time), set up an execution context, run each
bound value through its type's bind processor, fire events and wrap the cursor in a
result. On the hot writes (the call writer's group commit, the webhook outcomes), on the
SQLite thread, that was ~8 % of the service's CPU at 150 inbound calls per second
(py-spy), for a few rows per statement.

:func:`executemany` compiles each (statement, parameter names) once with SQLAlchemy's own
compiler for the connection's dialect, keeps the SQL text, the order of the parameters and
SQLAlchemy's bind processors, and then hands plain tuples to the sqlite3 cursor of the
same connection, inside the caller's transaction. What reaches SQLite is what
``connection.execute`` would send: the same SQL, the same processed values (so the
stored text of timestamps and JSON is unchanged). Statements SQLAlchemy would complete
itself (column defaults computed in Python, RETURNING) and other databases take
``connection.execute``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["executemany"]


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    processed: bool  # any processor at all


# Keyed by the statement itself (module constants in practice) and the rows' keys.
_plans: dict[tuple[Executable, tuple[str, ...]], _Plan | None] = {}
_MAX_PLANS = 256


def executemany(
    connection: Connection, statement: Executable, rows: Sequence[Mapping[str, Any]]
) -> int:
    """Execute ``statement`` once per row of ``rows`` (all with the same keys); the number
    of rows the database reports changed (``cursor.rowcount``)."""
    if not rows:
        return 0
    dialect = connection.dialect
    if dialect.name != "sqlite" or dialect.driver != "pysqlite":
        return connection.execute(statement, list(rows)).rowcount
    keys = tuple(rows[0])
    cache_key = (statement, keys)
    try:
        plan = _plans[cache_key]
    except KeyError:
        plan = _plan(connection, statement, keys)
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        _plans[cache_key] = plan
    if plan is None:
        return connection.execute(statement, list(rows)).rowcount
    names = plan.names
    if plan.processed:
        pairs = tuple(zip(names, plan.processors, strict=True))
        params = [tuple([row[n] if p is None else p(row[n]) for n, p in pairs]) for row in rows]
    else:
        params = [tuple([row[n] for n in names]) for row in rows]
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(plan.sql, params)
        return int(cursor.rowcount)
    finally:
        cursor.close()


def _plan(connection: Connection, statement: Executable, keys: tuple[str, ...]) -> _Plan | None:
    """The SQL and parameter order SQLAlchemy would use; None where it would do more
    than send the rows (Python-side defaults to compute, RETURNING, expanding IN)."""
    compile_ = statement.compile  # type: ignore[attr-defined]
    compiled = compile_(dialect=connection.dialect, column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    if (
        compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.effective_returning
        or compiled.positiontup is None
        or any(b.expanding for b in compiled.binds.values())
    ):
        return None
    names = tuple(compiled.positiontup)
    if not set(names) <= set(keys):
        return None  # a parameter the rows do not carry
    processors: list[Callable[[Any], Any] | None] = []
    for name in names:
        process = compiled._bind_processors.get(name)
        if process is not None and not callable(process):
            return None  # a tuple of processors: a tuple-valued parameter
        processors.append(process)
    return _Plan(
        sql=compiled.string,
        names=names,
        processors=tuple(processors),
        processed=any(p is not None for p in processors),
    )
