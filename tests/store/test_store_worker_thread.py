"""The database's worker thread: results, errors, order, cancelled waiters, stop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from app.store.db import WorkerThread


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
    with pytest.raises(RuntimeError):
        asyncio.run(_run_one(worker))


async def _run_one(worker: WorkerThread) -> None:
    await worker.run(lambda: None)
