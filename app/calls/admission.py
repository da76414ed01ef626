"""Admission control: may a NEW call start now? (load shedding and the call cap).

Offered more calls than it can take, a single-threaded service that takes them all falls
behind on everything: responses leave late, callers retransmit their INVITEs (RFC 3261
§17.1.1.2, Timer A) and BYEs, each copy costs a parse, and the calls already up suffer
with the new ones. Refusing new calls at the door, where it is cheap, keeps the admitted
ones on time: a new out-of-dialog INVITE gets 503 with Retry-After (RFC 3261 §21.5.4,
§20.33) from the TU in front of the UA (:class:`app.ua.recovery.RecoveryAgent`), and
``POST /v1/calls`` a 503 problem with a Retry-After header. In-dialog requests and actions
on live calls are never refused.

Two rules, checked per new call (a few attribute reads: microseconds):

* the cap (``CALLCTL_MAX_CALLS``, like Asterisk's ``maxcalls``): no more calls at once
  than this, counting every call with a SIP session;
* overload: while the service is behind, only a fraction of new calls is admitted.

Overload is judged from these signals, each against its own threshold (0 turns a signal
off): the loop's lag first, in seconds, which means the same on any machine; then queues
that stay short while the service keeps up and grow without bound when it does not (on
the benchmark's inbound and outbound overload, they are what rises first):

* the event loop's lag: how late a timer fires (:class:`LoopLagMonitor` samples it every
  20 ms); every callback of the process waits about as long. It is smoothed over about
  ten samples, each counted at most twice the threshold, so that one stall (a slow import,
  a large batch) does not count as an overload, while a loop late on every wake-up does;
* the database writer's backlog: call changes queued, not yet in a transaction;
* the webhook dispatcher's backlog: events waiting for a delivery slot, deliveries under
  way, outcomes waiting to be written;
* dial requests in progress: ``POST /v1/calls`` admitted and not yet answered (each waits
  for its row and its ``call.initiated`` to be committed).

The admitted fraction follows them (additive increase, multiplicative decrease): while
any signal is over its threshold the fraction halves every :data:`HALVING_SECONDS`; once
every signal is below half of its threshold it grows back to 1 in :data:`RECOVERY_SECONDS`;
in between it holds. That gap is the hysteresis: shedding does not flap on a signal that
hovers at its threshold, and throughput stays near what the service can do instead of
swinging between all and nothing. The decision logic takes its samples from
:meth:`AdmissionControl.observe` and its time from an injected clock, so tests feed it
without sleeping; the monitor task only measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from app.errors import ServiceUnavailableError, problem_type
from app.settings import Settings

__all__ = [
    "AdmissionControl",
    "LoopLagMonitor",
    "OverloadLimits",
    "OverloadedError",
    "Reason",
    "Refusal",
    "Source",
]

log = logging.getLogger(__name__)

Reason = Literal["overload", "max_calls"]
Source = Literal["sip", "api"]
REASONS: tuple[Reason, ...] = ("overload", "max_calls")
SOURCES: tuple[Source, ...] = ("sip", "api")

#: Seconds between two samples of the loop's lag.
SAMPLE_INTERVAL = 0.02
#: Weight of a new lag sample in the smoothed lag (per sample, not per second: a stall
#: of the loop is one sample however long it was).
LAG_WEIGHT = 0.1
#: A lag sample counts at most this many times the threshold.
LAG_CLIP = 2.0
#: A signal below this share of its threshold is calm (the lower edge of the hysteresis).
LOW_RATIO = 0.5
#: While a signal is over its threshold, the admitted fraction halves every so many seconds.
HALVING_SECONDS = 1.0
#: Once every signal is calm, the admitted fraction grows from 0 back to 1 in this time.
RECOVERY_SECONDS = 1.0
#: Retry-After (seconds) of a refusal: the least, the step per RETRY_AFTER_GROWTH seconds
#: of an overload that lasts, and the most (RFC 3261 §21.5.4: an upstream proxy takes the
#: whole server out of its rotation for that long, so it stays short).
RETRY_AFTER_MIN = 1
RETRY_AFTER_GROWTH = 10.0
RETRY_AFTER_MAX = 5
#: Shedding is logged at most once per this many seconds (a summary, not one line a call).
LOG_INTERVAL = 1.0
#: The longest gap between two samples that is taken at face value (a suspended process).
_MAX_STEP = 5.0


def _nothing() -> int:
    return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class OverloadLimits:
    """The thresholds; 0 turns the cap or a signal off."""

    max_calls: int = 0
    lag: float = 0.15  # seconds of smoothed event-loop lag
    write_backlog: int = 2000
    webhook_backlog: int = 2000
    dials: int = 100

    def __post_init__(self) -> None:
        if min(self.max_calls, self.write_backlog, self.webhook_backlog, self.dials) < 0:
            raise ValueError("limits must not be negative")
        if not math.isfinite(self.lag) or self.lag < 0:
            raise ValueError("the lag threshold must be zero or more seconds")

    @classmethod
    def from_settings(cls, settings: Settings) -> OverloadLimits:
        return cls(
            max_calls=settings.max_calls,
            lag=settings.overload_lag_ms / 1000,
            write_backlog=settings.overload_write_backlog,
            webhook_backlog=settings.overload_webhook_backlog,
            dials=settings.overload_dials,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why a new call is refused, and how long the caller should wait."""

    reason: Reason
    retry_after: int  # seconds
    detail: str


class OverloadedError(ServiceUnavailableError):
    """503 for ``POST /v1/calls``: overloaded, or the call cap is reached; with Retry-After."""

    type = problem_type("overloaded")
    title = "Overloaded"

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(
            refusal.detail,
            extensions={"reason": refusal.reason, "retry_after": refusal.retry_after},
            headers={"Retry-After": str(refusal.retry_after)},
        )
        self.refusal = refusal


class AdmissionControl:
    """Decides per new call; fed by :meth:`observe` (the monitor, or a test).

    ``active_calls``: calls with a SIP session now (for the cap). ``write_backlog``,
    ``webhook_backlog`` and ``dials``: the queues above, read at every :meth:`observe`.
    ``clock``: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        limits: OverloadLimits,
        *,
        active_calls: Callable[[], int] = _nothing,
        write_backlog: Callable[[], int] = _nothing,
        webhook_backlog: Callable[[], int] = _nothing,
        dials: Callable[[], int] = _nothing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._active_calls = active_calls
        self._write_backlog = write_backlog
        self._webhook_backlog = webhook_backlog
        self._dials = dials
        self._clock = clock
        self._last_sample = clock()
        self._fraction = 1.0  # of new calls admitted
        self._credit = 0.0  # admits one call per whole unit of accumulated fraction
        self._overload_since: float | None = None
        self.lag = 0.0  # smoothed, seconds
        self.lag_max = 0.0  # the largest raw sample since the last log line (for the log)
        self.writes_queued = 0
        self.webhooks_queued = 0
        self.dialing = 0
        self.shed: dict[tuple[Source, Reason], int] = {
            (source, reason): 0 for source in SOURCES for reason in REASONS
        }
        self._unlogged: dict[Reason, int] = {}
        self._logged_at = -math.inf

    # -- state -------------------------------------------------------------------------

    @property
    def admitted_fraction(self) -> float:
        return self._fraction

    @property
    def shedding(self) -> bool:
        """Overloaded: some new calls are being refused."""
        return self._fraction < 1.0

    def retry_after(self) -> int:
        """Seconds a refused caller is told to wait: grows while an overload lasts."""
        if self._overload_since is None:
            return RETRY_AFTER_MIN
        lasted = self._clock() - self._overload_since
        return min(RETRY_AFTER_MAX, RETRY_AFTER_MIN + int(lasted // RETRY_AFTER_GROWTH))

    # -- feeding -----------------------------------------------------------------------

    def observe(self, lag: float) -> None:
        """One sample of the loop's lag (seconds late); reads the backlogs, adjusts."""
        now = self._clock()
        step = min(max(0.0, now - self._last_sample), _MAX_STEP)
        self._last_sample = now
        counted = min(lag, LAG_CLIP * self.limits.lag) if self.limits.lag > 0 else lag
        self.lag += LAG_WEIGHT * (counted - self.lag)
        self.lag_max = max(self.lag_max, lag)
        self.writes_queued = self._write_backlog()
        self.webhooks_queued = self._webhook_backlog()
        self.dialing = self._dials()
        level = self._level()
        if level > 1.0:
            if self._overload_since is None:
                self._overload_since = now
            self._fraction *= 0.5 ** (step / HALVING_SECONDS)
        elif level < LOW_RATIO and self._fraction < 1.0:
            self._fraction = min(1.0, self._fraction + step / RECOVERY_SECONDS)
            if self._fraction >= 1.0:
                self._overload_since = None
                self._credit = 0.0
        if self._unlogged and now - self._logged_at >= LOG_INTERVAL:
            self._log(now)

    def _level(self) -> float:
        """The highest signal as a share of its threshold (over 1: overloaded)."""
        limits = self.limits
        level = 0.0
        if limits.lag > 0:
            level = self.lag / limits.lag
        if limits.write_backlog > 0:
            level = max(level, self.writes_queued / limits.write_backlog)
        if limits.webhook_backlog > 0:
            level = max(level, self.webhooks_queued / limits.webhook_backlog)
        if limits.dials > 0:
            level = max(level, self.dialing / limits.dials)
        return level

    # -- deciding ----------------------------------------------------------------------

    def admit(self, source: Source) -> Refusal | None:
        """None: the new call may start; else why not (counted and logged)."""
        cap = self.limits.max_calls
        if cap and self._active_calls() >= cap:
            return self._refuse(
                source, "max_calls", f"the limit of {cap} concurrent call(s) is reached"
            )
        if self._fraction < 1.0:
            # Admits exactly the fraction, spread evenly (no randomness: tests can count).
            self._credit += self._fraction
            if self._credit < 1.0:
                return self._refuse(source, "overload", "the service is overloaded")
            self._credit -= 1.0
        return None

    def admit_invite(self) -> int | None:
        """For the SIP side: None, or the Retry-After of the 503 that refuses the INVITE."""
        refusal = self.admit("sip")
        return None if refusal is None else refusal.retry_after

    def _refuse(self, source: Source, reason: Reason, what: str) -> Refusal:
        self.shed[source, reason] += 1
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        retry_after = self.retry_after()
        now = self._clock()
        if now - self._logged_at >= LOG_INTERVAL:
            self._log(now)
        return Refusal(
            reason=reason,
            retry_after=retry_after,
            detail=f"{what}: the new call is refused; retry after {retry_after} s",
        )

    def _log(self, now: float) -> None:
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._unlogged.items()))
        log.warning(
            "shedding load: %d new call(s) refused with 503 (%s); loop lag %.0f ms "
            "(max %.0f ms), admitting %.0f%%, %d call(s) up, write backlog %d, "
            "webhook backlog %d, dials in progress %d",
            sum(self._unlogged.values()),
            counts,
            self.lag * 1000,
            self.lag_max * 1000,
            self._fraction * 100,
            self._active_calls(),
            self.writes_queued,
            self.webhooks_queued,
            self.dialing,
        )
        self._unlogged.clear()
        self._logged_at = now
        self.lag_max = 0.0


class LoopLagMonitor:
    """Measures how late the running loop fires a timer, every ``interval`` seconds.

    Each lateness (seconds) goes to ``sink``, typically :meth:`AdmissionControl.observe`.
    The measurement is all this task does; the decisions are the sink's.
    """

    def __init__(self, sink: Callable[[float], None], *, interval: float = SAMPLE_INTERVAL):
        if interval <= 0:
            raise ValueError("the interval must be positive")
        self._sink = sink
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            try:
                self._sink(max(0.0, loop.time() - due))
            except Exception:  # a bug in the sink must not stop the sampling
                log.exception("loop lag monitor: the sink failed")
