"""Fixtures for the media layer: a free loopback port range, pools, handlers."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from app.media import PortPool, RtpSdhFactory, RtpSessionDescriptionHandler

LOOPBACK = "127.0.0.1"
PUBLIC = "192.0.2.10"  # RFC 5737 documentation address, only written into SDP


def can_bind(port: int, host: str = LOOPBACK) -> bool:
    """Whether a UDP socket can bind ``host:port`` right now."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def find_free_range(count: int) -> tuple[int, int]:
    """An even-aligned range of ``count`` UDP ports, all free on loopback.

    Drawn below the Linux ephemeral range (32768+) so that sockets other tests open on
    port 0 cannot land in it, and away from the default CALLCTL_RTP_PORTS (20000-20999).
    """
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(22000, 32000 - count) & ~1
        if all(can_bind(port) for port in range(low, low + count)):
            return low, low + count - 1
    raise RuntimeError("no free UDP port range on loopback")


class Holder:
    """Sockets a test binds to play "another process" holding ports."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []

    def take(self, port: int, host: str = LOOPBACK) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        self._sockets.append(sock)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def holder() -> Iterator[Holder]:
    taken = Holder()
    yield taken
    taken.close()


@pytest.fixture
def port_range() -> tuple[int, int]:
    return find_free_range(16)


@pytest.fixture
def pool(port_range: tuple[int, int]) -> PortPool:
    return PortPool(*port_range)


@pytest.fixture
def factory(pool: PortPool) -> RtpSdhFactory:
    return RtpSdhFactory(PUBLIC, LOOPBACK, pool)


@pytest.fixture
async def sdh(factory: RtpSdhFactory) -> AsyncIterator[RtpSessionDescriptionHandler]:
    handler = factory()
    yield handler
    handler.close()
    await handler.wait_closed()
