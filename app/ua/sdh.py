"""The media seam: SIP.js ``SessionDescriptionHandler`` in Python case.

The UA reaches media only through this protocol, made per session (or per early dialog of
an offer-less INVITE) by an injected factory. ``app.media.RtpSessionDescriptionHandler``
implements it structurally. Whether a body handed to ``set_description`` is an offer or an
answer follows from the handler's state (an answer while our offer is pending).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.media import Body

__all__ = ["Body", "SessionDescriptionHandler", "SessionDescriptionHandlerFactory"]


class SessionDescriptionHandler(Protocol):
    async def get_description(self, *, hold: bool = False) -> Body:
        """Our answer when a remote offer is pending, else a new offer."""
        ...

    async def set_description(self, body: Body) -> None:
        """Take an answer to our offer, or an offer; ``app.media.MediaError`` if refused."""
        ...

    def has_description(self, content_type: str) -> bool:
        """Whether a body of this type is a session description we handle."""
        ...

    def rollback_description(self) -> None:
        """Forget a pending offer (after 491 / a refused re-offer)."""
        ...

    def close(self) -> None:
        """Release the media resources; idempotent."""
        ...

    @property
    def local_hold(self) -> bool:
        """The last description we sent holds the far end."""
        ...

    @property
    def remote_hold(self) -> bool:
        """The far end's last description holds us (it does not want our audio)."""
        ...


SessionDescriptionHandlerFactory = Callable[[], SessionDescriptionHandler]
