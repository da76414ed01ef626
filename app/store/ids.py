"""Opaque, URL-safe identifiers made by the server."""

from __future__ import annotations

import base64

from app.sip.ids import random_bytes

CALL_ID_PREFIX = "call_"
EVENT_ID_PREFIX = "evt_"
# 16 random bytes: 128 bits, far beyond any collision worry; 22 URL-safe characters.
_RANDOM_BYTES = 16


def new_call_id() -> str:
    return CALL_ID_PREFIX + _urlsafe(random_bytes(_RANDOM_BYTES))


def new_event_id() -> str:
    return EVENT_ID_PREFIX + _urlsafe(random_bytes(_RANDOM_BYTES))


def _urlsafe(raw: bytes) -> str:
    # What secrets.token_urlsafe returns: base64url without the padding.
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
