"""Error families of the sans-IO SIP core.

Two families (docs/architecture.md, convention 3):

* the peer sent bad input: :class:`SipParseError` (bytes that do not parse) and
  :class:`RemoteProtocolError` (parses, but breaks the protocol). Both carry a
  ``status_hint``: the status code a UAS should answer with, if it answers at all.
* our caller misused the API: :class:`LocalProtocolError`.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "RemoteProtocolError", "SipError", "SipParseError"]


class SipError(Exception):
    """Base class of every error raised by ``app.sip``."""


class SipParseError(SipError):
    """Input that does not parse as SIP.

    ``status_hint`` is the response code a UAS would send (400 unless said otherwise).
    ``close_connection`` is True when the input came from a stream and its framing is lost
    (size limit exceeded, bad or missing Content-Length): the glue must close the
    connection, because no later byte on it can be trusted to start a message
    (RFC 3261 §18.3).
    """

    def __init__(
        self, msg: str, status_hint: int = 400, *, close_connection: bool = False
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status_hint = status_hint
        self.close_connection = close_connection

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.msg!r}, status_hint={self.status_hint}"
            f"{', close_connection=True' if self.close_connection else ''})"
        )


class RemoteProtocolError(SipError):
    """The peer sent a well-formed message that breaks the protocol (e.g. 481, 482)."""

    def __init__(self, msg: str, status_hint: int) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status_hint = status_hint


class LocalProtocolError(SipError):
    """Our caller misused the core's API (illegal state transition, bad argument)."""
