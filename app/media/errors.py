"""The one error type of the media layer."""

from __future__ import annotations


class MediaError(Exception):
    """Media could not be set up: bad or unacceptable SDP, no free port, closed handler.

    ``cause`` is a short human-readable text meant for logs and for the call's end reason
    (``"no common codec"``). ``status_hint`` is the SIP status a UAS would answer with if the
    failure came from a request's body: 488 Not Acceptable Here for SDP we understand but cannot
    accept (RFC 3261 §21.4.26), 400 for SDP we cannot parse, 415 for a body that is not SDP,
    503 when no RTP port is free, 500 for misuse of the handler.
    """

    def __init__(self, cause: str, *, status_hint: int = 488) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status_hint = status_hint

    def __repr__(self) -> str:
        return f"MediaError({self.cause!r}, status_hint={self.status_hint})"
