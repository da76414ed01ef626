"""Errors raised by the user agent layer (SIP.js ``src/api/exceptions`` twins)."""

from __future__ import annotations


class UaError(Exception):
    """Base class of user-agent errors."""


class StateTransitionError(UaError):
    """An action is not allowed in the session's current state (HTTP 409 upstream)."""

    def __init__(self, message: str, *, state: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.state = state
        self.allowed = allowed
