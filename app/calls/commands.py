"""What the REST layer (and later the webhook answer flow) asks the call service to do.

Plain frozen dataclasses, validated already at the HTTP edge: the service trusts their shape
and only decides whether the call's state allows them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

# Extra SIP header fields in wire order: a name repeated means the header is repeated.
HeaderFields = tuple[tuple[str, str], ...]

DEFAULT_RING_TIMEOUT = 60.0
DEFAULT_PROGRESS_CODE = 180
DEFAULT_REJECT_CODE = 480


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    """Digest credentials answering a 401/407 to the INVITE (RFC 3261 §22.2)."""

    username: str
    password: str

    def __repr__(self) -> str:  # never print a password
        return f"Auth(username={self.username!r}, password='***')"


@dataclass(frozen=True, slots=True, kw_only=True)
class Dial:
    """``POST /v1/calls``: one outbound call (SIP.js ``new Inviter(); invite()``)."""

    to: str
    from_uri: str | None = None
    display_name: str | None = None
    headers: HeaderFields = ()
    timeout: float = DEFAULT_RING_TIMEOUT
    early_media: bool = False
    offer: Literal["sdp", "none"] = "sdp"
    webhook_url: str | None = None
    client_state: str | None = None
    auth: Auth | None = None

    def fingerprint(self) -> str:
        """SHA-256 of the canonical request: equal for equal bodies (Idempotency-Key)."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """``POST /v1/calls/{id}/progress`` (SIP.js ``Invitation.progress()``)."""

    status_code: int = DEFAULT_PROGRESS_CODE
    reason: str | None = None
    headers: HeaderFields = ()
    reliable: bool = False
    early_media: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """``POST /v1/calls/{id}/accept`` (SIP.js ``Invitation.accept()``)."""

    headers: HeaderFields = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    """``POST /v1/calls/{id}/reject`` (SIP.js ``Invitation.reject()``)."""

    status_code: int = DEFAULT_REJECT_CODE
    reason: str | None = None
    headers: HeaderFields = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Hangup:
    """``cancel``, ``bye`` and ``hangup``: only extra headers."""

    headers: HeaderFields = ()
