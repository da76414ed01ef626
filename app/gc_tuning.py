"""Garbage-collector policy for a long-running ``callctl serve`` (not for tests).

Measured with ``python -m bench inbound``/``outbound`` (py-spy and ``gc.callbacks``): with
CPython's defaults, full collections walked the ~200,000 objects of the imported libraries
(SQLAlchemy, FastAPI, pydantic, aiortc) plus the state each call keeps while its
transactions linger (RFC 3261 §17: Timers J/K, RFC 6026 Accepted state, up to 32 s over
UDP): 100-360 ms each, every few seconds at 150 calls/s, which was the p99 of
INVITE->200. Those collections found almost nothing to free: the objects of a call are
freed by reference counting; the one source of cyclic garbage on the hot path (httpx's
Response <-> stream cycle, ~24 objects per webhook) is gone since the dispatcher calls
its transport directly. So, once everything is imported:

* ``gc.freeze()`` moves what exists to the permanent generation: the libraries' objects live
  as long as the process, and no collection walks them again;
* the young generation is collected every ``GEN0_THRESHOLD`` allocations (700 by default)
  and only it, automatically: cycles among short-lived objects are still found there;
* the older generations are collected in full every ``FULL_COLLECTION_INTERVAL_S`` by a
  daemon thread (one pause of the order of 100 ms per interval, instead of ~50 ms
  middle-generation pauses every few seconds), so that a cycle that lived long enough to
  be promoted is still freed.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

log = logging.getLogger(__name__)

GEN0_THRESHOLD = 20_000
# Never reached in practice: the middle and old generations are collected by the timer.
GEN1_THRESHOLD = 1_000_000
GEN2_THRESHOLD = 10
FULL_COLLECTION_INTERVAL_S = 300.0


def tune_for_serving(interval: float = FULL_COLLECTION_INTERVAL_S) -> threading.Thread:
    """Collect once, freeze the survivors, set the thresholds, start the full-collection
    timer (a daemon thread; returned for tests). Call after imports."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    thread = threading.Thread(
        target=_collect_every, args=(interval,), name="callctl-gc", daemon=True
    )
    thread.start()
    return thread


def _collect_every(interval: float) -> None:
    while True:
        time.sleep(interval)
        started = time.perf_counter()
        freed = gc.collect()
        log.debug(
            "full garbage collection: %d object(s) freed in %.1f ms",
            freed,
            (time.perf_counter() - started) * 1000,
        )
