"""Fixtures shared by the API tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """A SIP URI whose host swallows every datagram (no answer ever)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        yield f"sip:bob@127.0.0.1:{sink.getsockname()[1]}"
