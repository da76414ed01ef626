"""Garbage-collector settings for a long-running ``callctl serve`` (not for tests).

Measured with ``python -m bench inbound`` (py-spy and ``gc.callbacks``): with CPython's
defaults, full collections walked the ~200,000 objects of the imported libraries
(SQLAlchemy, FastAPI, pydantic, aiortc) plus the state each call keeps while its
transactions linger (RFC 3261 §17: Timers J/K, RFC 6026 Accepted state, up to 32 s over
UDP), taking 100-360 ms each every few seconds at 150 calls/s: the p99 INVITE->200 was
that pause. So, once everything is imported:

* ``gc.freeze()`` moves what exists to the permanent generation: the library objects live
  as long as the process, and collections no longer walk them;
* a larger young generation (``GEN0_THRESHOLD`` allocations instead of 700) lets the
  short-lived objects of a call die before they are promoted, and makes older collections
  rarer. Reference counting frees most objects at once anyway; the collector is only
  for cycles.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000
GEN1_THRESHOLD = 10
GEN2_THRESHOLD = 100


def tune_for_serving() -> None:
    """Collect once, freeze the survivors and raise the thresholds (call after imports)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
