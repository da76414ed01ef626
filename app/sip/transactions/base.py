"""What the four transaction state machines share (RFC 3261 §17).

Each FSM module holds one transition table: ``(state, input) -> (next state, actions)``.
A pair missing from the table is an illegal move and raises ``LocalProtocolError``.  Inputs
that the network can produce at any time (retransmissions, late responses) have explicit
entries in every live state, so only a caller's mistake can hit a missing pair.

A transaction never touches the clock or a socket: ``fire(input, now, message)`` returns the
effects (send this, deliver that to the TU, a timer now expires at ``deadline``) and the
endpoint carries them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, TypeAlias

from app.sip.errors import LocalProtocolError
from app.sip.message import Request, Response
from app.sip.timers import TimerConfig, TimerName

Addr: TypeAlias = tuple[str, int]


class TxState(StrEnum):
    """States of all four machines (each uses a subset)."""

    INIT = "init"  # created, START not yet fired
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"  # RFC 6026 §7.1 / §7.2
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class TxInput(StrEnum):
    """What can happen to a transaction."""

    START = "start"  # client: the TU hands over the request; server: the request arrived
    RECV_1XX = "recv_1xx"  # client: a provisional response arrived
    RECV_2XX = "recv_2xx"  # client: a 2xx arrived
    RECV_FINAL = "recv_300_699"  # client: a 300-699 arrived
    RECV_REQUEST = "recv_request"  # server: the request arrived again (retransmission)
    RECV_ACK = "recv_ack"  # server (INVITE): an ACK matched the transaction
    TU_1XX = "tu_1xx"  # server: the TU sends a provisional response
    TU_2XX = "tu_2xx"  # server: the TU sends a 2xx
    TU_FINAL = "tu_300_699"  # server: the TU sends a 300-699
    TRANSPORT_ERROR = "transport_error"  # RFC 3261 §17.1.4 / §17.2.4
    TIMER_A = "timer_A"
    TIMER_B = "timer_B"
    TIMER_D = "timer_D"
    TIMER_E = "timer_E"
    TIMER_F = "timer_F"
    TIMER_G = "timer_G"
    TIMER_H = "timer_H"
    TIMER_I = "timer_I"
    TIMER_J = "timer_J"
    TIMER_K = "timer_K"
    TIMER_L = "timer_L"
    TIMER_M = "timer_M"


TIMER_INPUTS: dict[TimerName, TxInput] = {
    name: TxInput("timer_" + name.value) for name in TimerName
}

CLIENT_NETWORK_INPUTS = frozenset(
    {TxInput.RECV_1XX, TxInput.RECV_2XX, TxInput.RECV_FINAL, TxInput.TRANSPORT_ERROR}
)


def response_input(status: int) -> TxInput:
    """The client-side input for a received response of ``status``."""
    if status < 200:
        return TxInput.RECV_1XX
    if status < 300:
        return TxInput.RECV_2XX
    return TxInput.RECV_FINAL


def tu_input(status: int) -> TxInput:
    """The server-side input for a response the TU sends."""
    if status < 200:
        return TxInput.TU_1XX
    if status < 300:
        return TxInput.TU_2XX
    return TxInput.TU_FINAL


class Act(StrEnum):
    """Actions without arguments."""

    SEND_REQUEST = "send_request"  # (re)transmit the request
    SEND_ACK = "send_ack"  # ICT: build (once) and send the ACK for a 300-699
    PASS_RESPONSE = "pass_response"  # client: hand the response to the TU
    PASS_ACK = "pass_ack"  # IST Accepted: hand the ACK to the TU (RFC 6026 §8.9)
    SEND_RESPONSE = "send_response"  # server: send the TU's response, remember it as last
    RESEND_RESPONSE = "resend_response"  # server: send the last response again, if any
    REPORT_TIMEOUT = "report_timeout"  # tell the TU the timer that ended us
    REPORT_TRANSPORT_ERROR = "report_transport_error"


@dataclass(frozen=True, slots=True)
class Start:
    """Arm a timer with its initial duration (not armed when the transport has no use for it)."""

    timer: TimerName


@dataclass(frozen=True, slots=True)
class Backoff:
    """Re-arm a repeating timer with its next interval (A doubles; E, G double up to T2)."""

    timer: TimerName


@dataclass(frozen=True, slots=True)
class Rearm:
    """Re-arm a timer with a fixed duration (NICT Proceeding: E = T2, RFC 3261 §17.1.2.2)."""

    timer: TimerName


@dataclass(frozen=True, slots=True)
class Stop:
    """Disarm a timer."""

    timer: TimerName


Action: TypeAlias = Act | Start | Backoff | Rearm | Stop
Transition: TypeAlias = tuple[TxState, tuple[Action, ...]]
Table: TypeAlias = Mapping[tuple[TxState, TxInput], Transition]

# An entry meaning "stay, do nothing": absorbs what the network may legally repeat.
STAY: tuple[Action, ...] = ()


# ---------------------------------------------------------------------------------------
# effects handed back to the endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class SendEffect:
    """Put ``message`` on the wire to the transaction's destination."""

    message: Request | Response


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverEffect:
    """Hand ``message`` (a response, or an ACK in IST Accepted) to the TU."""

    message: Request | Response


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerSetEffect:
    """Timer ``timer`` now expires at ``deadline`` (absolute, in ``now`` units)."""

    timer: TimerName
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutEffect:
    """The transaction ended because ``timer`` fired (B, F, H; RFC 3261 §17)."""

    timer: TimerName


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportErrorEffect:
    """The transaction ended on a transport failure (RFC 3261 §17.1.4 / §17.2.4)."""

    error: str


Effect: TypeAlias = (
    SendEffect | DeliverEffect | TimerSetEffect | TimeoutEffect | TransportErrorEffect
)


class Transaction:
    """One transaction instance driven through its class's ``TABLE``."""

    KIND: ClassVar[str] = "?"
    TABLE: ClassVar[Table] = {}
    # Inputs the peer or the transport can cause (must be handled in every live state).
    NETWORK_INPUTS: ClassVar[frozenset[TxInput]] = frozenset()

    def __init__(
        self,
        *,
        request: Request,
        transport: str,
        peer: Addr,
        timer_config: TimerConfig,
    ) -> None:
        self.request = request
        self.transport = transport.upper()
        self.peer = peer
        self.timer_config = timer_config
        self.state = TxState.INIT
        self.last_response: Response | None = None
        # Armed timers: name -> absolute deadline.  Intervals of the repeating ones.
        self.timers: dict[TimerName, float] = {}
        self.intervals: dict[TimerName, float] = {}
        # Retransmissions done by this transaction (for the endpoint's stats).
        self.retransmissions = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state}>"

    @property
    def terminated(self) -> bool:
        return self.state is TxState.TERMINATED

    def allowed(self, event: TxInput) -> bool:
        """True when ``event`` is a legal input in the current state."""
        return (self.state, event) in self.TABLE

    def fire(
        self,
        event: TxInput,
        now: float,
        message: Request | Response | None = None,
        *,
        error: str | None = None,
    ) -> list[Effect]:
        """Apply ``event``; returns what the endpoint must do.

        ``message`` is the response (RECV_*/TU_*) or request (RECV_REQUEST/RECV_ACK) that
        caused the input; ``error`` describes a TRANSPORT_ERROR.  Raises LocalProtocolError
        when the table has no entry for (state, event).  Timers armed with a zero duration
        (D, I, J, K on reliable transports) fire at once, inside this call.
        """
        effects: list[Effect] = []
        pending: list[tuple[TxInput, Request | Response | None]] = [(event, message)]
        while pending:
            current, msg = pending.pop(0)
            key = (self.state, current)
            if key not in self.TABLE:
                raise LocalProtocolError(
                    f"{self.KIND}: input {current.value} not allowed in state {self.state.value}"
                )
            target, actions = self.TABLE[key]
            self.state = target
            for action in actions:
                fired_now = self._do(action, current, now, msg, error, effects)
                if fired_now is not None:
                    pending.append((TIMER_INPUTS[fired_now], None))
            if target is TxState.TERMINATED:
                self.timers.clear()
                self.intervals.clear()
                break
        return effects

    # -- actions ------------------------------------------------------------------------

    def _do(
        self,
        action: Action,
        event: TxInput,
        now: float,
        message: Request | Response | None,
        error: str | None,
        effects: list[Effect],
    ) -> TimerName | None:
        """Carry out one action; returns a timer that must fire at once (zero duration)."""
        cfg = self.timer_config
        if isinstance(action, Start):
            duration = cfg.initial(action.timer, self.transport)
            if duration is None:
                return None  # not used on this transport
            if duration <= 0:
                return action.timer
            self._arm(action.timer, duration, now, effects)
            return None
        if isinstance(action, Backoff):
            duration = cfg.next_interval(action.timer, self.intervals[action.timer])
            self._arm(action.timer, duration, now, effects)
            return None
        if isinstance(action, Rearm):
            self._arm(action.timer, cfg.t2, now, effects)
            return None
        if isinstance(action, Stop):
            self.timers.pop(action.timer, None)
            self.intervals.pop(action.timer, None)
            return None
        if action is Act.SEND_REQUEST:
            if event is not TxInput.START:
                self.retransmissions += 1
            effects.append(SendEffect(message=self.request))
        elif action is Act.PASS_RESPONSE:
            if not isinstance(message, Response):
                raise LocalProtocolError(f"{self.KIND}: {event.value} needs a Response")
            self.last_response = message
            effects.append(DeliverEffect(message=message))
        elif action is Act.PASS_ACK:
            if not isinstance(message, Request):
                raise LocalProtocolError(f"{self.KIND}: {event.value} needs the ACK")
            effects.append(DeliverEffect(message=message))
        elif action is Act.SEND_RESPONSE:
            if not isinstance(message, Response):
                raise LocalProtocolError(f"{self.KIND}: {event.value} needs a Response")
            self.last_response = message
            effects.append(SendEffect(message=message))
        elif action is Act.RESEND_RESPONSE:
            if self.last_response is not None:
                self.retransmissions += 1
                effects.append(SendEffect(message=self.last_response))
        elif action is Act.REPORT_TIMEOUT:
            effects.append(TimeoutEffect(timer=TimerName(event.value.removeprefix("timer_"))))
        elif action is Act.REPORT_TRANSPORT_ERROR:
            effects.append(TransportErrorEffect(error=error or "transport error"))
        else:
            self._do_special(action, event, message, effects)
        return None

    def _arm(self, timer: TimerName, duration: float, now: float, effects: list[Effect]) -> None:
        deadline = now + duration
        self.timers[timer] = deadline
        self.intervals[timer] = duration
        effects.append(TimerSetEffect(timer=timer, deadline=deadline))

    def _do_special(
        self,
        action: Act,
        event: TxInput,
        message: Request | Response | None,
        effects: list[Effect],
    ) -> None:
        """Machine-specific actions (the ICT's ACK); the base class knows none."""
        raise LocalProtocolError(f"{self.KIND}: action {action.value} not supported")
