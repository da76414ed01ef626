"""Which REST action a call allows in which state: the 409 rules of the public contract.

One table per direction, keyed by the SIP.js ``SessionState`` (lower-case). An action not in
the entry is answered 409 with the state and the entry (``allowed_actions``); nothing is sent
on the wire. The UA keeps its own finer checks (``StateTransitionError``), which the service
turns into the same 409.

- An outbound call (SIP.js ``Inviter``) may be cancelled until a final response arrives
  (RFC 3261 §9.1: a CANCEL only makes sense for a pending INVITE) and sent BYE once it is
  established (RFC 3261 §15).
- An inbound call (SIP.js ``Invitation``) stays ``initial`` until ``accept``; ``progress``,
  ``accept`` and ``reject`` are allowed only then. After the 2xx is sent (``establishing``)
  only ``hangup`` is left: the BYE waits for the ACK (RFC 3261 §15: the callee must not send
  BYE on a dialog before the ACK arrives or the transaction times out).
- ``hangup`` is allowed in every state; on a terminating or terminated call it is a no-op.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from app.store.models import CallState, Direction


class Action(enum.StrEnum):
    PROGRESS = "progress"
    ACCEPT = "accept"
    REJECT = "reject"
    CANCEL = "cancel"
    BYE = "bye"
    HANGUP = "hangup"


_A = Action
_S = CallState

ALLOWED: Mapping[Direction, Mapping[CallState, tuple[Action, ...]]] = {
    Direction.OUTBOUND: {
        _S.INITIAL: (_A.CANCEL, _A.HANGUP),
        _S.ESTABLISHING: (_A.CANCEL, _A.HANGUP),
        _S.ESTABLISHED: (_A.BYE, _A.HANGUP),
        _S.TERMINATING: (_A.HANGUP,),
        _S.TERMINATED: (_A.HANGUP,),
    },
    Direction.INBOUND: {
        _S.INITIAL: (_A.PROGRESS, _A.ACCEPT, _A.REJECT, _A.HANGUP),
        _S.ESTABLISHING: (_A.HANGUP,),
        _S.ESTABLISHED: (_A.BYE, _A.HANGUP),
        _S.TERMINATING: (_A.HANGUP,),
        _S.TERMINATED: (_A.HANGUP,),
    },
}

# The order states follow; a state never goes backwards (API.md "Words").
STATE_ORDER: tuple[CallState, ...] = (
    _S.INITIAL,
    _S.ESTABLISHING,
    _S.ESTABLISHED,
    _S.TERMINATING,
    _S.TERMINATED,
)
_RANK = {state: index for index, state in enumerate(STATE_ORDER)}


def allowed_actions(direction: str, state: str) -> tuple[str, ...]:
    """The actions that would not be answered 409 now, in a stable order."""
    table = ALLOWED[Direction(direction)]
    return tuple(action.value for action in table[CallState(state)])


def is_allowed(action: Action, direction: str, state: str) -> bool:
    return action in ALLOWED[Direction(direction)][CallState(state)]


def later_state(current: str, new: str) -> str:
    """``new`` unless it would move the call backwards; then ``current`` stays."""
    return new if _RANK[CallState(new)] >= _RANK[CallState(current)] else current


def is_no_op(action: Action, state: str) -> bool:
    """``hangup`` on a call already ending or ended does nothing (and answers 200)."""
    return action is Action.HANGUP and CallState(state) in (_S.TERMINATING, _S.TERMINATED)
