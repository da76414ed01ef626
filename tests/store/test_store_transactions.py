"""The database's worker thread (results, errors, order, cancelled waiters, stop) and the
transactions it commits in groups on a SQLite file."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from app.store.db import Database, TransactionGroups, WorkerThread


@pytest.fixture
def worker() -> Iterator[WorkerThread]:
    thread = WorkerThread("test-worker")
    yield thread
    thread.stop()


async def test_runs_in_its_own_thread_and_returns_the_result(worker: WorkerThread) -> None:
    main = threading.get_ident()
    ident = await worker.run(threading.get_ident)
    assert ident != main
    assert await worker.run(lambda: 41 + 1) == 42
    # One thread for every job.
    assert await worker.run(threading.get_ident) == ident


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
async def test_the_thread_does_not_preempt_the_loop_on_wake_up(worker: WorkerThread) -> None:
    assert await worker.run(lambda: os.sched_getscheduler(0)) == os.SCHED_BATCH
    # The loop's own thread keeps its policy.
    assert os.sched_getscheduler(0) != os.SCHED_BATCH


async def test_an_exception_reaches_the_waiter(worker: WorkerThread) -> None:
    def boom() -> None:
        raise ValueError("no such table")

    with pytest.raises(ValueError, match="no such table"):
        await worker.run(boom)
    # The thread goes on.
    assert await worker.run(lambda: "still here") == "still here"


async def test_jobs_run_in_the_order_they_were_queued(worker: WorkerThread) -> None:
    seen: list[int] = []
    futures = [worker.run(lambda i=i: seen.append(i)) for i in range(200)]
    await asyncio.gather(*futures)
    assert seen == list(range(200))


async def test_a_cancelled_waiter_does_not_stop_the_job_or_the_thread(
    worker: WorkerThread,
) -> None:
    release = threading.Event()
    ran = threading.Event()

    def slow() -> str:
        release.wait(10)
        ran.set()
        return "done"

    future = worker.run(slow)
    future.cancel()
    release.set()
    # The next job runs after the cancelled one, which still ran.
    assert await worker.run(lambda: ran.is_set()) is True


async def test_stop_finishes_queued_jobs_and_refuses_new_ones() -> None:
    worker = WorkerThread("test-stop")
    seen: list[int] = []
    futures = [worker.run(lambda i=i: seen.append(i)) for i in range(5)]
    await asyncio.to_thread(worker.stop)
    assert seen == [0, 1, 2, 3, 4]
    await asyncio.gather(*futures)
    with pytest.raises(RuntimeError, match="stopped"):
        worker.run(lambda: None)
    worker.stop()  # idempotent


def test_stop_before_any_job_starts_no_thread() -> None:
    worker = WorkerThread("test-unused")
    worker.stop()
    assert "test-unused" not in {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="stopped"):
        asyncio.run(_run_one(worker))
    assert "test-unused" not in {t.name for t in threading.enumerate()}


async def _run_one(worker: WorkerThread) -> None:
    await worker.run(lambda: None)


# -- transactions in groups (a SQLite file) ------------------------------------------------


@pytest.fixture
async def file_database(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'groups.db'}")
    assert database.groups is not None
    await database.transact(lambda c: c.execute(text("CREATE TABLE t (x INTEGER UNIQUE)")))
    yield database
    await database.dispose()


def _insert(x: int) -> Callable[[Connection], int]:
    def work(connection: Connection) -> int:
        connection.execute(text("INSERT INTO t (x) VALUES (:x)"), {"x": x})
        return x

    return work


def _values(connection: Connection) -> list[int]:
    return [row[0] for row in connection.execute(text("SELECT x FROM t ORDER BY rowid"))]


async def _while_blocked(database: Database, works: list[Awaitable[Any]]) -> list[Any]:
    """Start ``works`` while the worker thread is busy, so that they queue together."""
    assert database.worker is not None
    release = threading.Event()
    blocked = database.worker.run(lambda: release.wait(10))
    tasks = [asyncio.ensure_future(w) for w in works]
    await asyncio.sleep(0)  # every task has queued its work
    release.set()
    await blocked
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_works_queued_together_share_a_transaction(file_database: Database) -> None:
    groups = file_database.groups
    assert groups is not None
    before = groups.transactions
    results = await _while_blocked(
        file_database, [file_database.transact(_insert(i)) for i in range(50)]
    )
    assert results == list(range(50))
    assert groups.transactions - before == 1
    # In queue order.
    assert await file_database.transact(_values) == list(range(50))


async def test_a_failing_work_fails_only_its_own_waiter(file_database: Database) -> None:
    groups = file_database.groups
    assert groups is not None
    await file_database.transact(_insert(7))
    before = groups.transactions
    outcomes = await _while_blocked(
        file_database,
        [
            file_database.transact(_insert(1)),
            file_database.transact(_insert(7)),  # UNIQUE violation: the group fails
            file_database.transact(_insert(2)),
        ],
    )
    assert outcomes[0] == 1 and outcomes[2] == 2
    assert isinstance(outcomes[1], IntegrityError)
    # The group rolled back; then each alone: two commits, one failure.
    assert groups.transactions - before == 2
    assert await file_database.transact(_values) == [7, 1, 2]


async def test_a_cancelled_waiter_s_work_is_still_committed(file_database: Database) -> None:
    waiter = asyncio.ensure_future(file_database.transact(_insert(5)))
    await asyncio.sleep(0)  # queued
    waiter.cancel()
    assert await file_database.transact(_values) == [5]


class _FakeTime:
    """A clock for the worker thread that moves only when it sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_transactions_start_at_least_the_spacing_apart(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'spacing.db'}")
    assert database.groups is not None and database.worker is not None
    fake = _FakeTime()
    groups = TransactionGroups(
        database.groups._engine, database.worker, spacing=0.002, clock=fake.clock,
        sleep=fake.sleep,
    )
    try:
        await groups.transact(lambda c: c.execute(text("CREATE TABLE t (x INTEGER UNIQUE)")))
        assert fake.sleeps == []  # the first transaction waits for nothing
        fake.now += 0.0005
        await groups.transact(_insert(1))  # 0.5 ms after the last start: waits 1.5 ms
        assert fake.sleeps == [pytest.approx(0.0015)]
        fake.now += 0.010
        await groups.transact(_insert(2))  # 10 ms later: no wait
        assert len(fake.sleeps) == 1
        assert await groups.transact(_values) == [1, 2]
    finally:
        await database.dispose()


async def test_works_arriving_during_the_spacing_join_one_transaction(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'join.db'}")
    assert database.groups is not None and database.worker is not None
    release = threading.Event()
    queued = threading.Event()

    def sleep(seconds: float) -> None:
        # The worker thread waits out the spacing; meanwhile the loop queues 20 works.
        queued.set()
        assert release.wait(10)

    groups = TransactionGroups(
        database.groups._engine, database.worker, spacing=3600.0, clock=lambda: 0.0,
        sleep=sleep,
    )
    try:
        await groups.transact(lambda c: c.execute(text("CREATE TABLE t (x INTEGER UNIQUE)")))
        before = groups.transactions
        tasks = [asyncio.ensure_future(groups.transact(_insert(i))) for i in range(20)]
        await asyncio.to_thread(queued.wait, 10)
        await asyncio.sleep(0)  # every task has queued its work
        release.set()
        assert await asyncio.gather(*tasks) == list(range(20))
        assert groups.transactions - before == 1
    finally:
        release.set()
        await database.dispose()


# -- WAL checkpoints in their own thread --------------------------------------------------


async def test_the_checkpointer_moves_the_log_into_the_file_and_stops(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    checkpointer = database.checkpointer
    assert checkpointer is not None
    try:
        await database.transact(lambda c: c.execute(text("CREATE TABLE t (x INTEGER UNIQUE)")))
        for i in range(20):
            await database.transact(_insert(i))
        # The commits left their pages in the log (the backstop is far off) ...
        busy, frames, done = await asyncio.to_thread(checkpointer.checkpoint)
        assert busy == 0 and frames > 0
        # ... and the checkpoint copied all of them into the database file.
        assert done == frames
        assert "callctl-sqlite-checkpoint" in {t.name for t in threading.enumerate()}
    finally:
        await database.dispose()
    assert "callctl-sqlite-checkpoint" not in {t.name for t in threading.enumerate()}
    # What was committed is in the file.
    reopened = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    try:
        assert await reopened.transact(_values) == list(range(20))
    finally:
        await reopened.dispose()


async def test_commits_leave_the_checkpoints_to_the_thread(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'auto.db'}")
    try:
        pages = await database.transact(
            lambda c: c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        )
        assert pages == 10_000
    finally:
        await database.dispose()
