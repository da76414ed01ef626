"""A message body as exchanged between the UA layer and a session description handler."""

from __future__ import annotations

from dataclasses import dataclass

SDP_CONTENT_TYPE = "application/sdp"


@dataclass(frozen=True, slots=True)
class Body:
    """One body (SIP.js ``Body``): its media type and its text."""

    content_type: str
    content: str


def is_sdp(content_type: str) -> bool:
    """True for ``application/sdp``, ignoring case, whitespace and parameters (RFC 3261 §20.15)."""
    return content_type.split(";", 1)[0].strip().lower() == SDP_CONTENT_TYPE
