"""Opaque, URL-safe identifiers made by the server."""

from __future__ import annotations

import secrets

CALL_ID_PREFIX = "call_"
EVENT_ID_PREFIX = "evt_"
# 16 random bytes: 128 bits, far beyond any collision worry; 22 URL-safe characters.
_RANDOM_BYTES = 16


def new_call_id() -> str:
    return CALL_ID_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def new_event_id() -> str:
    return EVENT_ID_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)
