"""Session state machine (SIP.js ``SessionState``) as a transition table.

The session FSM says what the *application* sees; the dialog FSM (early/confirmed,
``app.sip.dialog``) is kept apart on purpose, as in SIP.js ``session.ts`` vs ``dialog``.
"""

from __future__ import annotations

from enum import StrEnum

from app.ua.errors import StateTransitionError


class SessionState(StrEnum):
    INITIAL = "initial"
    ESTABLISHING = "establishing"
    ESTABLISHED = "established"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


_S = SessionState

# SIP.js session.ts stateTransition(): the only allowed moves. A state never goes back.
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    _S.INITIAL: frozenset({_S.ESTABLISHING, _S.ESTABLISHED, _S.TERMINATING, _S.TERMINATED}),
    _S.ESTABLISHING: frozenset({_S.ESTABLISHED, _S.TERMINATING, _S.TERMINATED}),
    _S.ESTABLISHED: frozenset({_S.TERMINATING, _S.TERMINATED}),
    _S.TERMINATING: frozenset({_S.TERMINATED}),
    _S.TERMINATED: frozenset(),
}


def check_transition(current: SessionState, new: SessionState) -> None:
    """Raise StateTransitionError unless ``current -> new`` is in the table."""
    if new not in TRANSITIONS[current]:
        raise StateTransitionError(
            f"invalid session state transition {current.value} -> {new.value}",
            state=current.value,
        )
