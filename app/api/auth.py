"""Bearer API keys for /v1 (``CALLCTL_API_KEYS``); other paths are open."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import UnauthorizedError

# auto_error=False: we answer 401 ourselves, as problem+json with a Bearer challenge.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="An API key from CALLCTL_API_KEYS (only when that setting is not empty).",
)


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """Constant-time check against every key (no early exit that would leak which matched)."""
    given = candidate.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    keys: tuple[str, ...] = request.app.state.api_keys
    if not keys:
        return
    if credentials is None:
        raise UnauthorizedError("an 'Authorization: Bearer <API key>' header is required")
    if not key_matches(credentials.credentials, keys):
        raise UnauthorizedError("the API key is not valid", invalid_token=True)
