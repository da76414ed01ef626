"""The retry schedule, its jitter, and what each attempt result means."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.webhooks.retry import (
    DEFAULT_RETRY_SCHEDULE,
    RetryPolicy,
    Verdict,
    describe,
    jitter_bounds,
    judge,
    parse_schedule,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_default_schedule_starts_fast_and_spans_about_a_day() -> None:
    assert DEFAULT_RETRY_SCHEDULE[:3] == (1.0, 5.0, 30.0)
    span = RetryPolicy().total_span()
    assert 20 * 3600 <= span <= 30 * 3600
    assert RetryPolicy().max_attempts == len(DEFAULT_RETRY_SCHEDULE) + 1


def test_parse_schedule() -> None:
    assert parse_schedule("1, 5,30 ,120") == (1.0, 5.0, 30.0, 120.0)
    assert parse_schedule([0.5, 2]) == (0.5, 2.0)
    assert parse_schedule("") == ()
    assert describe(parse_schedule("1,5,30,0.5e3")) == "1,5,30,500"
    for bad, message in [
        ("1,x", "not a number"),
        ("1,0", "positive"),
        ("5,1", "decrease"),
        ("1,inf", "positive"),
        ("-1", "positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_schedule(bad)


def test_policy_checks_its_values() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(schedule=(5.0, 1.0))
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.0)


def test_delays_follow_the_schedule_with_seeded_jitter() -> None:
    policy = RetryPolicy(schedule=(1.0, 5.0, 30.0), jitter=0.2)
    rng, replay = random.Random(42), random.Random(42)
    delays = [policy.delay_after(n, rng) for n in (1, 2, 3)]
    assert delays == [base * replay.uniform(0.8, 1.2) for base in (1.0, 5.0, 30.0)]
    for attempts, delay in zip((1, 2, 3), delays, strict=True):
        low, high = jitter_bounds(policy, attempts) or (0, 0)
        assert delay is not None and low <= delay <= high
    # Attempt 4 = len(schedule) + 1 was the last one.
    assert policy.delay_after(4, rng) is None
    assert policy.delay_after(0, rng) is None


def test_without_jitter_the_delays_are_exact() -> None:
    policy = RetryPolicy(schedule=(2.0, 7.0), jitter=0.0)
    rng = random.Random(0)
    assert policy.next_attempt_at(attempts_made=1, now=T0, created_at=T0, rng=rng) == T0 + (
        timedelta(seconds=2)
    )
    assert policy.next_attempt_at(attempts_made=2, now=T0, created_at=T0, rng=rng) == T0 + (
        timedelta(seconds=7)
    )
    assert policy.next_attempt_at(attempts_made=3, now=T0, created_at=T0, rng=rng) is None


def test_max_age_gives_up_early() -> None:
    policy = RetryPolicy(schedule=(10.0, 100.0), jitter=0.0, max_age=timedelta(seconds=60))
    rng = random.Random(0)
    assert policy.next_attempt_at(attempts_made=1, now=T0, created_at=T0, rng=rng) is not None
    later = T0 + timedelta(seconds=10)
    assert policy.next_attempt_at(attempts_made=2, now=later, created_at=T0, rng=rng) is None


@given(
    schedule=st.lists(st.floats(0.01, 1e5), min_size=1, max_size=15).map(
        lambda xs: tuple(sorted(xs))
    ),
    jitter=st.floats(0, 0.5),
    seed=st.integers(0, 2**32),
)
def test_every_delay_stays_within_its_jitter_band(
    schedule: tuple[float, ...], jitter: float, seed: int
) -> None:
    policy = RetryPolicy(schedule=schedule, jitter=jitter)
    rng = random.Random(seed)
    for attempts in range(1, policy.max_attempts):
        delay = policy.delay_after(attempts, rng)
        base = schedule[attempts - 1]
        assert delay is not None
        assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9
    assert policy.delay_after(policy.max_attempts, rng) is None


@pytest.mark.parametrize(
    ("status", "refused", "verdict"),
    [
        (200, False, Verdict.DELIVERED),
        (204, False, Verdict.DELIVERED),
        (299, False, Verdict.DELIVERED),
        (301, False, Verdict.RETRY),
        (400, False, Verdict.RETRY),
        (404, False, Verdict.RETRY),
        (410, False, Verdict.GONE),
        (429, False, Verdict.RETRY),
        (500, False, Verdict.RETRY),
        (503, False, Verdict.RETRY),
        (None, False, Verdict.RETRY),
        (None, True, Verdict.REFUSED),
    ],
)
def test_judge(status: int | None, refused: bool, verdict: Verdict) -> None:
    assert judge(status, refused=refused) is verdict
