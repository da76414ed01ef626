"""Admission control: the cap, the overload signals, the hysteresis, Retry-After, the log.

The decision logic is fed lag samples and backlog values directly, on a fake clock (no
sleeping); the loop-lag monitor is checked on its own against a loop it is made to wait for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import pytest

from app.calls.admission import (
    HALVING_SECONDS,
    LOG_INTERVAL,
    RECOVERY_SECONDS,
    RETRY_AFTER_GROWTH,
    RETRY_AFTER_MAX,
    AdmissionControl,
    LoopLagMonitor,
    OverloadedError,
    OverloadLimits,
)
from app.settings import Settings, SettingsError, load_settings

STEP = 0.02  # the monitor's sampling interval


@dataclass
class Signals:
    """What the control reads, set by the test; and the fake clock."""

    now: float = 0.0
    calls: int = 0
    writes: int = 0
    webhooks: int = 0
    dials: int = 0

    def control(self, **limits: Any) -> AdmissionControl:
        return AdmissionControl(
            OverloadLimits(**limits),
            active_calls=lambda: self.calls,
            write_backlog=lambda: self.writes,
            webhook_backlog=lambda: self.webhooks,
            dials=lambda: self.dials,
            clock=lambda: self.now,
        )

    def feed(self, control: AdmissionControl, lag: float, seconds: float) -> None:
        """Samples every STEP for ``seconds`` of fake time."""
        for _ in range(round(seconds / STEP)):
            self.now += STEP
            control.observe(lag)


def admitted(control: AdmissionControl, tries: int) -> int:
    return sum(control.admit("sip") is None for _ in range(tries))


# -- the cap ---------------------------------------------------------------------------------


def test_the_cap_refuses_the_call_over_it_with_503_reason_max_calls() -> None:
    signals = Signals(calls=1)
    control = signals.control(max_calls=2)
    assert control.admit("sip") is None
    signals.calls = 2
    refusal = control.admit("api")
    assert refusal is not None
    assert refusal.reason == "max_calls"
    assert refusal.retry_after == 1
    assert "limit of 2 concurrent call(s)" in refusal.detail
    assert control.admit_invite() == 1
    assert control.shed[("api", "max_calls")] == 1
    assert control.shed[("sip", "max_calls")] == 1
    assert control.shed[("sip", "overload")] == 0
    signals.calls = 1  # one ended: room again
    assert control.admit("sip") is None


def test_no_cap_by_default() -> None:
    signals = Signals(calls=100_000)
    assert signals.control().admit("sip") is None


# -- overload: the loop's lag ----------------------------------------------------------------


def test_a_sustained_lag_over_the_threshold_sheds_a_growing_share() -> None:
    signals = Signals()
    control = signals.control(lag=0.25)
    signals.feed(control, 0.0, 1.0)
    assert not control.shedding
    assert admitted(control, 100) == 100

    signals.feed(control, 0.4, 1.0)  # late on every wake-up
    assert control.lag > 0.25
    assert control.shedding
    first = control.admitted_fraction
    signals.feed(control, 0.4, HALVING_SECONDS)
    assert control.admitted_fraction == pytest.approx(first / 2)
    signals.feed(control, 0.4, 2 * HALVING_SECONDS)
    assert control.admitted_fraction == pytest.approx(first / 8)
    assert admitted(control, 100) < 25
    refusal = control.admit("api")
    assert refusal is not None and refusal.reason == "overload"
    assert refusal.retry_after >= 1
    assert control.shed[("sip", "overload")] > 75


def test_one_stall_of_the_loop_is_not_an_overload() -> None:
    signals = Signals()
    control = signals.control(lag=0.25)
    signals.feed(control, 0.0, 1.0)
    signals.now += 5.0  # the loop was held 5 s once (a slow import, a huge batch)
    control.observe(5.0)
    assert control.lag <= 0.25 / 2  # counted at most 2x the threshold, one sample of ten
    signals.feed(control, 0.0, 1.0)
    assert control.admitted_fraction == 1.0
    assert control.lag_max == 5.0  # the log still tells of it
    assert admitted(control, 10) == 10


def test_hysteresis_holds_between_half_and_the_threshold_then_recovers() -> None:
    signals = Signals()
    control = signals.control(lag=0.25)
    signals.feed(control, 0.5, 2.0)
    assert control.shedding
    signals.feed(control, 0.2, 2.0)  # below the threshold, above half of it: hold
    held = control.admitted_fraction
    assert 0 < held < 0.5
    signals.feed(control, 0.2, 2.0)
    assert control.admitted_fraction == held

    signals.feed(control, 0.0, RECOVERY_SECONDS / 2)  # calm: grows back, not at once
    assert held < control.admitted_fraction < 1
    signals.feed(control, 0.0, RECOVERY_SECONDS)
    assert control.admitted_fraction == 1.0
    assert not control.shedding
    assert admitted(control, 10) == 10


def test_a_fraction_admits_exactly_that_share_evenly() -> None:
    signals = Signals(writes=6000)
    control = signals.control(write_backlog=5000)
    signals.now += HALVING_SECONDS
    control.observe(0.0)  # over for one halving time: half of the calls
    assert control.admitted_fraction == pytest.approx(0.5)
    outcomes = [control.admit("sip") is None for _ in range(10)]
    assert outcomes == [False, True] * 5


# -- overload: the backlogs ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["writes", "webhooks", "dials"])
def test_a_backlog_over_its_threshold_sheds(which: str) -> None:
    signals = Signals()
    control = signals.control(write_backlog=100, webhook_backlog=100, dials=100)
    signals.feed(control, 0.0, 0.2)
    assert not control.shedding
    setattr(signals, which, 101)
    signals.feed(control, 0.0, 1.0)
    assert control.shedding
    assert (control.writes_queued, control.webhooks_queued, control.dialing) == (
        signals.writes,
        signals.webhooks,
        signals.dials,
    )
    setattr(signals, which, 60)  # above half: hold
    held = control.admitted_fraction
    signals.feed(control, 0.0, 1.0)
    assert control.admitted_fraction == held
    setattr(signals, which, 40)
    signals.feed(control, 0.0, RECOVERY_SECONDS)
    assert not control.shedding


def test_zero_turns_a_signal_off() -> None:
    signals = Signals(writes=10**6, webhooks=10**6, dials=10**6)
    control = signals.control(lag=0, write_backlog=0, webhook_backlog=0, dials=0)
    signals.feed(control, 5.0, 2.0)
    assert not control.shedding
    assert admitted(control, 10) == 10


def test_no_samples_no_shedding() -> None:
    """Without the monitor (e.g. a service under test) every call is admitted."""
    signals = Signals(writes=10**6)
    control = signals.control()
    assert admitted(control, 10) == 10


# -- Retry-After -----------------------------------------------------------------------------


def test_retry_after_grows_while_the_overload_lasts_and_resets_after() -> None:
    signals = Signals(webhooks=2000)
    control = signals.control(webhook_backlog=1000)
    signals.feed(control, 0.0, 1.0)
    assert control.retry_after() == 1
    signals.feed(control, 0.0, 2 * RETRY_AFTER_GROWTH)
    assert control.retry_after() == 3
    refusal = control.admit("api")
    assert refusal is not None and refusal.retry_after == 3
    assert "retry after 3 s" in refusal.detail
    signals.feed(control, 0.0, 10 * RETRY_AFTER_GROWTH)
    assert control.retry_after() == RETRY_AFTER_MAX
    signals.webhooks = 0
    signals.feed(control, 0.0, RECOVERY_SECONDS + 0.1)
    assert not control.shedding
    assert control.retry_after() == 1


def test_the_api_error_is_a_503_problem_with_retry_after() -> None:
    signals = Signals(calls=3)
    refusal = signals.control(max_calls=3).admit("api")
    assert refusal is not None
    error = OverloadedError(refusal)
    body = error.to_problem()
    assert body["status"] == 503
    assert body["type"] == "urn:callctl:problem:overloaded"
    assert body["title"] == "Overloaded"
    assert (body["reason"], body["retry_after"]) == ("max_calls", 1)
    assert error.headers == {"Retry-After": "1"}


# -- the log ---------------------------------------------------------------------------------


def test_shedding_is_logged_at_most_once_per_second(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.calls.admission")
    signals = Signals(calls=5)
    control = signals.control(max_calls=5)
    for _ in range(50):
        signals.now += 0.01
        control.admit("sip")
    assert len(caplog.records) == 1  # the first one, at once
    assert "1 new call(s) refused with 503 (max_calls: 1)" in caplog.records[0].getMessage()
    signals.feed(control, 0.0, LOG_INTERVAL)  # the rest, summed, once a second is over
    assert len(caplog.records) == 2
    assert "(max_calls: 49)" in caplog.records[1].getMessage()
    signals.feed(control, 0.0, 3 * LOG_INTERVAL)  # nothing refused since: nothing logged
    assert len(caplog.records) == 2


# -- limits and settings ---------------------------------------------------------------------


def test_limits_from_settings() -> None:
    settings = Settings(
        max_calls=7,
        overload_lag_ms=300,
        overload_write_backlog=10,
        overload_webhook_backlog=20,
        overload_dials=30,
    )
    assert OverloadLimits.from_settings(settings) == OverloadLimits(
        max_calls=7, lag=0.3, write_backlog=10, webhook_backlog=20, dials=30
    )


def test_defaults_cap_nothing_and_shed_only_under_real_overload() -> None:
    limits = OverloadLimits.from_settings(Settings())
    assert limits.max_calls == 0
    assert limits == OverloadLimits()
    assert limits.lag > 0 and limits.write_backlog > 0
    assert limits.webhook_backlog > 0 and limits.dials > 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CALLCTL_MAX_CALLS", "-1"),
        ("CALLCTL_MAX_CALLS", "many"),
        ("CALLCTL_OVERLOAD_LAG_MS", "-5"),
        ("CALLCTL_OVERLOAD_LAG_MS", "60001"),
        ("CALLCTL_OVERLOAD_WRITE_BACKLOG", "-1"),
        ("CALLCTL_OVERLOAD_WEBHOOK_BACKLOG", "1.5"),
        ("CALLCTL_OVERLOAD_DIALS", "-2"),
    ],
)
def test_invalid_load_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        OverloadLimits(max_calls=-1)
    with pytest.raises(ValueError, match="lag"):
        OverloadLimits(lag=float("nan"))


# -- the monitor -----------------------------------------------------------------------------


async def test_the_monitor_reports_how_late_the_loop_ran_its_timer() -> None:
    samples: list[float] = []
    got = asyncio.Event()

    def sink(lag: float) -> None:
        samples.append(lag)
        got.set()

    monitor = LoopLagMonitor(sink, interval=0.01)
    monitor.start()
    try:
        async with asyncio.timeout(5):
            await got.wait()
            got.clear()
            # The loop is held for 100 ms (a blocking callback): the timer due within 10 ms
            # fires late by at least 90 ms.
            time.sleep(0.1)  # noqa: ASYNC251
            await got.wait()
        assert monitor.running
    finally:
        await monitor.stop()
    assert not monitor.running
    assert all(lag >= 0 for lag in samples)
    assert samples[1] >= 0.09, samples


async def test_the_monitor_survives_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    again = asyncio.Event()

    def sink(lag: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        again.set()

    monitor = LoopLagMonitor(sink, interval=0.01)
    monitor.start()
    try:
        await asyncio.wait_for(again.wait(), 5)
    finally:
        await monitor.stop()
    assert calls >= 2
    assert any("sink failed" in r.getMessage() for r in caplog.records)
