"""Random identifiers: Via branches, tags, Call-IDs (RFC 3261 §8.1.1.4, §8.1.1.7, §19.3).

All randomness comes from ``secrets``: tags and Call-IDs must be unguessable enough that a
third party cannot inject requests into a dialog, and branches must be unique over time.
"""

from __future__ import annotations

import secrets

# RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with this magic cookie.
MAGIC_COOKIE = "z9hG4bK"

# 96 bits for tags and branches, 128 bits for Call-IDs: global uniqueness with a margin,
# and hex output is always a valid SIP token (§25.1).
_TAG_BYTES = 12
_BRANCH_BYTES = 12
_CALL_ID_BYTES = 16


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie followed by random hex."""
    return MAGIC_COOKIE + secrets.token_hex(_BRANCH_BYTES)


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 §19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(_TAG_BYTES)


def new_call_id(host: str | None = None) -> str:
    """A fresh Call-ID, ``random@host`` when a host is given (RFC 3261 §8.1.1.4)."""
    token = secrets.token_hex(_CALL_ID_BYTES)
    return f"{token}@{host}" if host else token


def is_rfc3261_branch(branch: str | None) -> bool:
    """True when ``branch`` carries the RFC 3261 magic cookie (§17.2.3)."""
    return branch is not None and branch.startswith(MAGIC_COOKIE)
