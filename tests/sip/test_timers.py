"""RFC 3261 §17 / Table 4 timer values and RFC 6026 Timers L and M."""

from __future__ import annotations

import pytest

from app.sip.timers import TimerConfig, TimerName, is_reliable

T = TimerName


def test_defaults_are_rfc_3261_table_4() -> None:
    cfg = TimerConfig()
    assert (cfg.t1, cfg.t2, cfg.t4) == (0.5, 4.0, 5.0)


@pytest.mark.parametrize(
    ("timer", "udp", "tcp"),
    [
        (T.A, 0.5, None),  # §17.1.1.2: T1, UDP only
        (T.B, 32.0, 32.0),  # 64*T1
        (T.D, 32.0, 0.0),  # >= 32 s on UDP, 0 reliable
        (T.E, 0.5, None),  # §17.1.2.2: T1, UDP only
        (T.F, 32.0, 32.0),
        (T.G, 0.5, None),  # §17.2.1: T1, UDP only
        (T.H, 32.0, 32.0),
        (T.I, 5.0, 0.0),  # T4 / 0
        (T.J, 32.0, 0.0),  # 64*T1 / 0
        (T.K, 5.0, 0.0),  # T4 / 0
        (T.L, 32.0, 32.0),  # RFC 6026: 64*T1
        (T.M, 32.0, 32.0),
    ],
)
def test_initial_values_per_transport(timer: TimerName, udp: float, tcp: float | None) -> None:
    cfg = TimerConfig()
    assert cfg.initial(timer, "UDP") == udp
    assert cfg.initial(timer, "udp") == udp
    assert cfg.initial(timer, "TCP") == tcp
    assert cfg.initial(timer, "TLS") == tcp


def test_values_follow_t1_and_t4() -> None:
    cfg = TimerConfig(t1=1.0, t2=8.0, t4=2.0)
    assert cfg.timer_b("UDP") == 64.0
    assert cfg.timer_f("UDP") == 64.0
    assert cfg.timer_h("TCP") == 64.0
    assert cfg.timer_j("UDP") == 64.0
    assert cfg.timer_l("UDP") == cfg.timer_m("UDP") == 64.0
    assert cfg.timer_i("UDP") == cfg.timer_k("UDP") == 2.0
    assert cfg.timer_d("UDP") == 64.0  # 64*T1 is more than 32 s


def test_timer_d_is_at_least_32_seconds_on_udp() -> None:
    assert TimerConfig(t1=0.1).timer_d("UDP") == 32.0


def test_timer_a_doubles_without_cap() -> None:
    cfg = TimerConfig()
    intervals = [0.5]
    for _ in range(6):
        intervals.append(cfg.next_interval(T.A, intervals[-1]))
    assert intervals == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


@pytest.mark.parametrize("timer", [T.E, T.G])
def test_timers_e_and_g_double_up_to_t2(timer: TimerName) -> None:
    cfg = TimerConfig()
    intervals = [0.5]
    for _ in range(6):
        intervals.append(cfg.next_interval(timer, intervals[-1]))
    assert intervals == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_one_shot_timers_do_not_repeat() -> None:
    with pytest.raises(ValueError, match="does not repeat"):
        TimerConfig().next_interval(T.B, 32.0)


def test_reliable_transports() -> None:
    assert not is_reliable("UDP")
    assert all(is_reliable(t) for t in ("TCP", "tls", "WS", "wss", "SCTP"))


@pytest.mark.parametrize(("t1", "t2", "t4"), [(0.0, 4.0, 5.0), (1.0, 0.5, 5.0), (0.5, 4.0, -1.0)])
def test_bad_values_are_refused(t1: float, t2: float, t4: float) -> None:
    with pytest.raises(ValueError, match="bad timer values"):
        TimerConfig(t1=t1, t2=t2, t4=t4)
