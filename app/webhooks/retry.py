"""When to try a webhook again, and what an attempt's result means.

The schedule is a list of delays (seconds) between attempts, from the setting
``CALLCTL_WEBHOOK_RETRY_SCHEDULE``: attempt 1 is immediate, attempt k+1 follows attempt k
after ``schedule[k-1]`` seconds give or take the jitter, so there are ``len(schedule) + 1``
attempts in all. Jitter spreads the retries of many events that failed together (a
receiver that was down) so they do not come back as one wave.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# Fast at first (a receiver that blinked), then backing off to hours: 11 retries over
# about 27 hours (1 s + 5 s + 30 s + 2 min + 10 min + 30 min + 1 h + 2 h + 4 h + 8 h + 12 h).
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (
    1.0,
    5.0,
    30.0,
    120.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    43200.0,
)
DEFAULT_JITTER = 0.2  # each delay is drawn from [delay * 0.8, delay * 1.2]
# RFC 9110 §15.5.11: 410 Gone means the target is gone for good: stop sending to it.
GONE = 410


def parse_schedule(text: str | Iterable[float]) -> tuple[float, ...]:
    """``"1,5,30"`` (or numbers) to a tuple of positive, non-decreasing delays."""
    items: list[float] = []
    raw = text.split(",") if isinstance(text, str) else list(text)
    for item in raw:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
        try:
            delay = float(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a number of seconds") from None
        if not delay > 0 or delay == float("inf"):
            raise ValueError("each retry delay must be a positive number of seconds")
        items.append(delay)
    if any(later < earlier for earlier, later in itertools.pairwise(items)):
        raise ValueError("retry delays must not decrease")
    return tuple(items)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """The schedule, its jitter and an optional age limit for giving an event up."""

    schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    jitter: float = DEFAULT_JITTER
    max_age: timedelta | None = None

    def __post_init__(self) -> None:
        parse_schedule(self.schedule)
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def delay_after(self, attempts_made: int, rng: random.Random) -> float | None:
        """Seconds to wait after the ``attempts_made``-th failed attempt; None: give up."""
        if attempts_made < 1 or attempts_made > len(self.schedule):
            return None
        base = self.schedule[attempts_made - 1]
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)

    def next_attempt_at(
        self,
        *,
        attempts_made: int,
        now: datetime,
        created_at: datetime,
        rng: random.Random,
    ) -> datetime | None:
        """When to try again after a failed attempt, or None to give the event up."""
        delay = self.delay_after(attempts_made, rng)
        if delay is None:
            return None
        moment = now + timedelta(seconds=delay)
        if self.max_age is not None and moment - created_at > self.max_age:
            return None
        return moment

    def total_span(self) -> float:
        """Seconds from the first to the last attempt without jitter."""
        return float(sum(self.schedule))


class Verdict(enum.StrEnum):
    """What one attempt's result means for its event."""

    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # any other status, timeout, connection or protocol error
    GONE = "gone"  # 410: give the event up and stop sending to this URL
    REFUSED = "refused"  # the target is not allowed (SSRF) or not a usable URL: give up


def judge(status_code: int | None, *, refused: bool = False) -> Verdict:
    """Classify an attempt: ``status_code`` None means no HTTP response was received."""
    if refused:
        return Verdict.REFUSED
    if status_code is None:
        return Verdict.RETRY
    if 200 <= status_code <= 299:
        return Verdict.DELIVERED
    if status_code == GONE:
        return Verdict.GONE
    # 3xx are not followed (a redirect could lead anywhere, SSRF); 4xx/5xx may be transient.
    return Verdict.RETRY


def jitter_bounds(policy: RetryPolicy, attempts_made: int) -> tuple[float, float] | None:
    """The range ``delay_after(attempts_made)`` draws from (for checks and docs)."""
    if attempts_made < 1 or attempts_made > len(policy.schedule):
        return None
    base = policy.schedule[attempts_made - 1]
    return base * (1 - policy.jitter), base * (1 + policy.jitter)


def describe(schedule: Sequence[float]) -> str:
    """``1,5,30`` as written in the setting."""
    return ",".join(f"{delay:g}" for delay in schedule)
