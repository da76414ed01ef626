"""RFC 3261 §17 timer values (Timers A-K) and RFC 6026 Timers L and M.

Everything is plain arithmetic on ``TimerConfig``: the core never reads a clock, the caller
passes ``now`` in and the endpoint turns durations into absolute deadlines.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Transports that deliver reliably (RFC 3261 §18; WS per RFC 7118, SCTP per RFC 4168).
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def is_reliable(transport: str) -> bool:
    """True for stream/reliable transports, where retransmission timers are not used."""
    return transport.upper() in RELIABLE_TRANSPORTS


class TimerName(StrEnum):
    """RFC 3261 Table 4 timers plus RFC 6026 §8.11 L and M."""

    A = "A"  # INVITE request retransmit interval, UDP only
    B = "B"  # INVITE transaction timeout
    D = "D"  # wait time for response retransmits (ICT Completed)
    E = "E"  # non-INVITE request retransmit interval, UDP only
    F = "F"  # non-INVITE transaction timeout
    G = "G"  # INVITE response retransmit interval
    H = "H"  # wait time for ACK receipt
    I = "I"  # wait time for ACK retransmits (IST Confirmed)  # noqa: E741
    J = "J"  # wait time for non-INVITE request retransmits
    K = "K"  # wait time for response retransmits (NICT Completed)
    L = "L"  # RFC 6026: IST Accepted, absorb INVITE retransmits
    M = "M"  # RFC 6026: ICT Accepted, absorb 2xx retransmits


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1 (RTT estimate), T2 (max non-INVITE retransmit interval), T4 (max network lifetime).

    Defaults are RFC 3261 §17.1.1.1 / Table 4.  Each ``timer_x(transport)`` returns the
    duration in seconds; ``None`` means the timer is not used on that transport (A, E, G on
    reliable transports); ``0.0`` means "fire at once" (D, I, J, K on reliable transports).
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 >= 0):
            raise ValueError(f"bad timer values t1={self.t1} t2={self.t2} t4={self.t4}")

    def timer_a(self, transport: str) -> float | None:
        # RFC 3261 §17.1.1.2: initial value T1, only for unreliable transports.
        return None if is_reliable(transport) else self.t1

    def timer_b(self, transport: str) -> float:
        # RFC 3261 §17.1.1.2: 64*T1 on every transport.
        return 64 * self.t1

    def timer_d(self, transport: str) -> float:
        # RFC 3261 §17.1.1.2: at least 32 s on unreliable transports, zero on reliable ones.
        return 0.0 if is_reliable(transport) else max(32.0, 64 * self.t1)

    def timer_e(self, transport: str) -> float | None:
        # RFC 3261 §17.1.2.2: initial value T1, only for unreliable transports.
        return None if is_reliable(transport) else self.t1

    def timer_f(self, transport: str) -> float:
        # RFC 3261 §17.1.2.2: 64*T1.
        return 64 * self.t1

    def timer_g(self, transport: str) -> float | None:
        # RFC 3261 §17.2.1: initial value T1, only for unreliable transports.
        return None if is_reliable(transport) else self.t1

    def timer_h(self, transport: str) -> float:
        # RFC 3261 §17.2.1: 64*T1 on every transport.
        return 64 * self.t1

    def timer_i(self, transport: str) -> float:
        # RFC 3261 §17.2.1: T4 on unreliable transports, zero on reliable ones.
        return 0.0 if is_reliable(transport) else self.t4

    def timer_j(self, transport: str) -> float:
        # RFC 3261 §17.2.2: 64*T1 on unreliable transports, zero on reliable ones.
        return 0.0 if is_reliable(transport) else 64 * self.t1

    def timer_k(self, transport: str) -> float:
        # RFC 3261 §17.1.2.2: T4 on unreliable transports, zero on reliable ones.
        return 0.0 if is_reliable(transport) else self.t4

    def timer_l(self, transport: str) -> float:
        # RFC 6026 §8.11: 64*T1.
        return 64 * self.t1

    def timer_m(self, transport: str) -> float:
        # RFC 6026 §8.11: 64*T1.
        return 64 * self.t1

    def initial(self, name: TimerName, transport: str) -> float | None:
        """The first duration of ``name`` on ``transport`` (see the class docstring)."""
        method = _INITIAL[name]
        return method(self, transport)

    def next_interval(self, name: TimerName, previous: float) -> float:
        """The interval after a retransmission timer fired with ``previous``.

        RFC 3261 §17.1.1.2: A doubles without cap.  §17.1.2.2 and §17.2.1: E and G double
        up to T2.  Other timers are one-shot.
        """
        if name is TimerName.A:
            return 2 * previous
        if name in (TimerName.E, TimerName.G):
            return min(2 * previous, self.t2)
        raise ValueError(f"timer {name} does not repeat")


_INITIAL = {
    TimerName.A: TimerConfig.timer_a,
    TimerName.B: TimerConfig.timer_b,
    TimerName.D: TimerConfig.timer_d,
    TimerName.E: TimerConfig.timer_e,
    TimerName.F: TimerConfig.timer_f,
    TimerName.G: TimerConfig.timer_g,
    TimerName.H: TimerConfig.timer_h,
    TimerName.I: TimerConfig.timer_i,
    TimerName.J: TimerConfig.timer_j,
    TimerName.K: TimerConfig.timer_k,
    TimerName.L: TimerConfig.timer_l,
    TimerName.M: TimerConfig.timer_m,
}
