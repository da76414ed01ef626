"""Engine and session factories (no module globals: the composition root owns them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from app.store.types import json_serializer

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long to wait for PostgreSQL to accept a connection before reporting it unreachable.
CONNECT_TIMEOUT_S = 10.0
# Least time between the starts of two SQLite transactions (TransactionGroups): works
# that arrive meanwhile share the next one. Measured with the benchmark at 175 inbound
# calls per second (python -m bench inbound, 10 s steps, callctl on one CPU): 0 -> 2 ms
# took the p99 INVITE->200 from ~90 ms to ~20 ms and the CPU per call from ~5.2 to
# ~4.5 ms; 4 ms saved a little more CPU but raised the median at 87 cps from ~3.5 to
# ~9 ms. At a low rate a work rarely comes within 2 ms of the last transaction and waits
# for nothing.
SQLITE_TRANSACTION_SPACING_S = 0.002
# How long a SQLite writer waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000
# WAL checkpoints (copying the log's pages into the database file, then an fsync) run in
# a thread of their own every SQLITE_CHECKPOINT_INTERVAL_S (SqliteCheckpointer), not in
# the commit that crosses SQLite's 1000-page default, which stalled the transaction
# thread and every commit queued behind it. At 75 inbound cps (after 150 cps), p99
# INVITE->200 went from ~11 ms to ~6.5 ms (two runs each, python -m bench inbound).
SQLITE_CHECKPOINT_INTERVAL_S = 0.5
# The commits' own checkpoint stays as a backstop, for a log the thread lets grow (pages).
SQLITE_AUTOCHECKPOINT_PAGES = 10_000
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
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
    finally:
        cursor.close()


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine for ``sqlite+aiosqlite`` or ``postgresql+asyncpg`` URLs."""
    backend = make_url(url).get_backend_name()
    kwargs: dict[str, Any] = {"echo": echo, "json_serializer": json_serializer}
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


def _sqlite_file_engine(url: str, *, echo: bool = False) -> Engine | None:
    """A synchronous engine on the same SQLite file (None for other databases and memory)."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    engine = create_sync_engine(
        parsed.set(drivername="sqlite"),
        echo=echo,
        pool_size=1,
        max_overflow=0,
        json_serializer=json_serializer,
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def batch_scheduling() -> None:
    """Put the calling thread under ``SCHED_BATCH`` (Linux; elsewhere nothing).

    The database threads share the CPU with the event loop's thread (the benchmark pins
    the service to one CPU). Woken by a queued transaction, a normal thread preempted the
    loop's thread at once, only to wait for the GIL that thread still held: py-spy found
    the loop ~6 % of its time on ``SimpleQueue.put`` at 200 inbound cps. A batch thread
    is not given the CPU on wake-up ahead of the running thread (sched(7)); it keeps its
    share of the CPU. At 170 inbound cps, p99 INVITE->200 went from ~44 to ~28 ms (two
    runs each on a noisy host; at 85 cps ~16 -> ~11 ms).
    """
    setter = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_BATCH", None)
    if setter is None or policy is None:
        return
    with contextlib.suppress(OSError):
        setter(0, policy, os.sched_param(0))


class WorkerThread:
    """One thread that runs functions in order, for an event loop to await.

    What ``loop.run_in_executor`` on a one-worker ``ThreadPoolExecutor`` does, without its
    per-call machinery (a ``concurrent.futures.Future`` chained to an asyncio one, the
    executor's locks and idle semaphore): a job is put on a ``SimpleQueue`` and its result
    comes back with ``call_soon_threadsafe``. That machinery was ~7 % of the service's CPU
    at 150 inbound calls per second (py-spy), for one or two transactions per call.

    A job whose waiter was cancelled still runs (it may already be running); its result is
    dropped. :meth:`stop` lets the queued jobs finish and then ends the thread.
    """

    _STOP = object()

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = False
        self._stopped = False

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` (from the loop's thread); the returned future gets its result. The
        thread starts with the first job."""
        if self._stopped:
            raise RuntimeError("the worker thread is stopped")
        if not self._started:
            self._thread.start()
            self._started = True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn))
        return future

    def stop(self) -> None:
        """Finish the queued jobs, end the thread and wait for it (idempotent)."""
        self._stopped = True
        if self._started and self._thread.is_alive():
            self._jobs.put(self._STOP)
            self._thread.join()

    def _main(self) -> None:
        batch_scheduling()
        while True:
            job = self._jobs.get()
            if job is self._STOP:
                return
            loop, future, fn = job
            try:
                outcome: _Outcome = (future, True, fn())
            except BaseException as exc:
                outcome = (future, False, exc)
            _hand_back(loop, [outcome])
            del job, loop, future, fn, outcome


_Outcome = tuple[asyncio.Future[Any], bool, Any]  # (waiter, succeeded, result or exception)


class SqliteCheckpointer:
    """A thread that checkpoints a SQLite file's WAL every ``interval`` seconds.

    ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own: it copies what no
    reader still needs and waits for no lock, so the writer goes on committing meanwhile
    (https://sqlite.org/wal.html, "Checkpointing"). Started on the first :meth:`start`,
    ended by :meth:`stop`.
    """

    def __init__(self, path: str, interval: float = SQLITE_CHECKPOINT_INTERVAL_S) -> None:
        self._path = path
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # checkpoint() may also be called from elsewhere

    def start(self) -> None:
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(
                target=self._main, name="callctl-sqlite-checkpoint", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """End the thread (after a checkpoint under way) and close its connection."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def checkpoint(self) -> tuple[int, int, int]:
        """One passive checkpoint: (busy, frames in the log, frames checkpointed)."""
        with self._lock:
            if self._connection is None:
                self._connection = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False
                )
                self._connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            row = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return int(row[0]), int(row[1]), int(row[2])

    def _main(self) -> None:
        batch_scheduling()
        while not self._stopping.wait(self._interval):
            try:
                self.checkpoint()
            except sqlite3.Error:
                log.warning("SQLite WAL checkpoint failed", exc_info=True)


def _hand_back(loop: asyncio.AbstractEventLoop, outcomes: list[_Outcome]) -> None:
    """From the worker thread: settle ``outcomes`` on their loop."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, outcomes)


class TransactionGroups:
    """Transactions on one connection, in one thread, committed in groups.

    ``transact(work)`` queues ``work``; the worker thread takes everything queued so far
    and runs it in ONE transaction, in order, then settles each waiter. Works that arrive
    while a transaction runs wait for the next one, which starts no sooner than
    ``spacing`` (2 ms) after the one before: at a low rate each work gets its own
    transaction at once, under load many share one. A transaction is most of the cost of
    a small write (SQLAlchemy's begin and commit, SQLite's WAL append, a thread hop both
    ways): at 50 inbound calls per second, before grouping, the call writer's and the
    webhook outcomes' transactions cost ~3.7 ms of CPU per call in this thread, for ~4
    transactions of ~0.4-1 ms each.

    When a group fails (a work raised, or the commit did), each of its works is run again
    alone, in its own transaction, so that one failing work fails only its own waiter.
    Works are therefore written to be run again: plain statements on the connection.
    """

    def __init__(
        self,
        engine: Engine,
        worker: WorkerThread,
        *,
        spacing: float = SQLITE_TRANSACTION_SPACING_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._engine = engine
        self._worker = worker
        self._spacing = spacing
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._queued: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._draining = False
        self._last_start = -spacing
        #: Transactions committed (for tests).
        self.transactions = 0

    async def transact(self, work: Callable[[Connection], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queued.append((work, future))
            start = not self._draining
            self._draining = True
        if start:
            self._worker.run(self._drain).add_done_callback(_log_failure)
        return await future

    def _drain(self) -> None:
        """In the worker thread: one transaction per batch until nothing is queued, each
        starting at least ``spacing`` after the one before (the worker thread sleeps, so
        that what arrives meanwhile joins the batch)."""
        while True:
            with self._lock:
                if not self._queued:
                    self._draining = False
                    return
            wait = self._last_start + self._spacing - self._clock()
            if wait > 0:
                self._sleep(wait)
            self._last_start = self._clock()
            with self._lock:
                batch, self._queued = self._queued, []
            outcomes = self._run(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for outcome in outcomes:
                by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
            for loop, settled in by_loop.items():
                _hand_back(loop, settled)

    def _run(
        self, batch: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]]
    ) -> list[_Outcome]:
        try:
            with self._engine.begin() as connection:
                results = [work(connection) for work, _ in batch]
        except Exception as exc:
            if len(batch) == 1:
                return [(batch[0][1], False, exc)]
            return [outcome for item in batch for outcome in self._run([item])]
        self.transactions += 1
        return [(future, True, result) for (_, future), result in zip(batch, results, strict=True)]


def _settle(outcomes: list[_Outcome]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the waiter was cancelled; the work was done anyway
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("the transaction thread failed", exc_info=future.exception())


async def _transact_async(engine: AsyncEngine, work: Callable[[Connection], T]) -> T:
    async with engine.begin() as connection:
        return await connection.run_sync(work)


@dataclass(frozen=True, slots=True, kw_only=True, weakref_slot=True)
class Database:
    """The engine and its session factory, built together and disposed together.

    Weakly referenceable: ``app.calls.writer`` keeps its group writer per database.

    ``transact(work)`` runs ``work(connection)`` (synchronous SQLAlchemy Core) in a
    transaction, for the hot write paths (the call writer's group commit, the webhook
    outcomes). On a SQLite file it runs in one dedicated thread with the standard
    ``sqlite3`` driver, together with the works queued meanwhile
    (:class:`TransactionGroups`): one thread hop per group instead of aiosqlite's hops per
    statement (cursor, execute, fetch, close), and sqlite3 lets go of the GIL while SQLite
    works. Elsewhere (PostgreSQL, in-memory SQLite) each runs on the async engine
    (``run_sync``).
    """

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    sync_engine: Engine | None = None
    worker: WorkerThread | None = None
    groups: TransactionGroups | None = None
    checkpointer: SqliteCheckpointer | None = None

    @classmethod
    def from_url(cls, url: str, *, echo: bool = False) -> Database:
        engine = create_engine(url, echo=echo)
        sync_engine = _sqlite_file_engine(url, echo=echo)
        if sync_engine is None:
            return cls(engine=engine, sessionmaker=create_sessionmaker(engine))
        worker = WorkerThread("callctl-sqlite")
        return cls(
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            sync_engine=sync_engine,
            worker=worker,
            groups=TransactionGroups(sync_engine, worker),
            checkpointer=SqliteCheckpointer(str(sync_engine.url.database)),
        )

    async def transact(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in a transaction (committed unless it raises); on a SQLite
        file, with the other works queued meanwhile (:class:`TransactionGroups`)."""
        if self.checkpointer is not None:
            self.checkpointer.start()  # with the first write
        if self.groups is None:
            return await _transact_async(self.engine, work)
        return await self.groups.transact(work)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session

    async def ping(self) -> None:
        await ping(self.engine)

    async def dispose(self) -> None:
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.stop)
        if self.worker is not None:
            # Let a transaction under way finish, then close the thread's connection.
            await self.worker.run(self._dispose_sync)
            self.worker.stop()
        await self.engine.dispose()

    def _dispose_sync(self) -> None:
        if self.sync_engine is not None:
            self.sync_engine.dispose()
