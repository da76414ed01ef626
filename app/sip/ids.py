"""Random identifiers: Via branches, tags, Call-IDs (RFC 3261 §8.1.1.4, §8.1.1.7, §19.3).

All randomness comes from the operating system's CSPRNG (``os.urandom``, as in
``secrets``): tags and Call-IDs must be unguessable enough that a
third party cannot inject requests into a dialog, and branches must be unique over time.
"""

from __future__ import annotations

import os

# Kernel randomness fetched in blocks: one getrandom() call per block instead of one per
# identifier (several per call: tags, branches, Call-IDs, the service's ids). The bytes are
# the same CSPRNG output, each used once; the block is dropped in a forked child.
_BLOCK = 4096


class _RandomBytes:
    def __init__(self) -> None:
        self._block = b""
        self._used = 0

    def take(self, count: int) -> bytes:
        if self._used + count > len(self._block):
            self._block = os.urandom(max(_BLOCK, count))
            self._used = 0
        start = self._used
        self._used += count
        return self._block[start : self._used]

    def reset(self) -> None:
        self._block = b""
        self._used = 0


_random = _RandomBytes()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random.reset)


def random_bytes(count: int) -> bytes:
    """``count`` bytes from the operating system's CSPRNG (like ``secrets.token_bytes``)."""
    return _random.take(count)


def random_below(limit: int) -> int:
    """A random integer in [0, limit), limit < 2**32 (64 random bits: bias below 2**-32)."""
    return int.from_bytes(_random.take(8), "big") % limit


def random_hex(count: int) -> str:
    """``count`` random bytes as hex (like ``secrets.token_hex``)."""
    return _random.take(count).hex()

# RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with this magic cookie.
MAGIC_COOKIE = "z9hG4bK"

# 96 bits for tags and branches, 128 bits for Call-IDs: global uniqueness with a margin,
# and hex output is always a valid SIP token (§25.1).
_TAG_BYTES = 12
_BRANCH_BYTES = 12
_CALL_ID_BYTES = 16


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie followed by random hex."""
    return MAGIC_COOKIE + random_hex(_BRANCH_BYTES)


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 §19.3: at least 32 bits of randomness)."""
    return random_hex(_TAG_BYTES)


def new_call_id(host: str | None = None) -> str:
    """A fresh Call-ID, ``random@host`` when a host is given (RFC 3261 §8.1.1.4)."""
    token = random_hex(_CALL_ID_BYTES)
    return f"{token}@{host}" if host else token


def is_rfc3261_branch(branch: str | None) -> bool:
    """True when ``branch`` carries the RFC 3261 magic cookie (§17.2.3)."""
    return branch is not None and branch.startswith(MAGIC_COOKIE)
