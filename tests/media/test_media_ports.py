"""PortPool: even RTP ports with RTCP above, really bound, skipped when taken, reused."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from app.media import MediaError, PortPool
from tests.media.conftest import LOOPBACK, Holder, can_bind


@pytest.mark.parametrize(("low", "high"), [(0, 10), (10, 9), (5000, 70000), (5001, 5002)])
def test_pool_rejects_bad_ranges(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        PortPool(low, high)


def test_pool_counts_even_odd_pairs() -> None:
    assert PortPool(20000, 20999).capacity == 500
    assert PortPool(20001, 20999).capacity == 499  # 20002/20003 ... 20998/20999
    assert PortPool(20000, 20002).capacity == 1  # 20002 would need 20003 for RTCP
    pool = PortPool(20000, 20001)
    assert (pool.low, pool.high, pool.capacity, pool.in_use) == (20000, 20001, 1, 0)


async def test_acquire_binds_even_rtp_and_rtcp_above(port_range: tuple[int, int]) -> None:
    low, high = port_range
    pool = PortPool(low + 1, high)  # odd start: the first pair is low+2/low+3
    ports = await pool.acquire(LOOPBACK)
    try:
        assert ports.rtp_port == low + 2
        assert ports.rtcp_port == low + 3
        assert ports.host == LOOPBACK
        assert ports.rtp_transport.get_extra_info("sockname") == (LOOPBACK, low + 2)
        assert ports.rtcp_transport.get_extra_info("sockname") == (LOOPBACK, low + 3)
        assert not can_bind(ports.rtp_port)
        assert not can_bind(ports.rtcp_port)
        assert pool.in_use == 1
        assert not ports.closed
    finally:
        await ports.wait_closed()


async def test_close_frees_both_ports_and_returns_them(pool: PortPool) -> None:
    ports = await pool.acquire(LOOPBACK)
    ports.close()
    ports.close()  # idempotent
    assert ports.closed
    await ports.wait_closed()
    assert can_bind(ports.rtp_port)
    assert can_bind(ports.rtcp_port)
    assert pool.in_use == 0


async def test_bound_socket_receives_datagrams(pool: PortPool) -> None:
    ports = await pool.acquire(LOOPBACK)
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.sendto(b"\x80\x00", (LOOPBACK, ports.rtp_port))
        sender.close()
        # The packet is on loopback already; one loop turn per step delivers it.
        for _ in range(100):
            if ports.datagrams_received:
                break
            await asyncio.sleep(0)
        assert ports.datagrams_received == 1
    finally:
        await ports.wait_closed()


async def test_exhaustion_raises_media_error_then_reuse(port_range: tuple[int, int]) -> None:
    low, _ = port_range
    pool = PortPool(low, low + 3)  # two pairs
    first = await pool.acquire(LOOPBACK)
    second = await pool.acquire(LOOPBACK)
    assert {first.rtp_port, second.rtp_port} == {low, low + 2}
    with pytest.raises(MediaError) as caught:
        await pool.acquire(LOOPBACK)
    assert caught.value.status_hint == 503
    assert f"{low}-{low + 3}" in caught.value.cause
    assert pool.in_use == 2
    await first.wait_closed()
    third = await pool.acquire(LOOPBACK)
    assert third.rtp_port == first.rtp_port
    await second.wait_closed()
    await third.wait_closed()
    assert pool.in_use == 0


async def test_round_robin_does_not_reuse_a_just_freed_port(pool: PortPool) -> None:
    first = await pool.acquire(LOOPBACK)
    await first.wait_closed()
    second = await pool.acquire(LOOPBACK)
    assert second.rtp_port == first.rtp_port + 2
    await second.wait_closed()


async def test_skips_pairs_held_by_other_processes(
    port_range: tuple[int, int], holder: Holder
) -> None:
    low, _ = port_range
    holder.take(low)  # the RTP port of the first pair
    holder.take(low + 3)  # the RTCP port of the second pair
    pool = PortPool(low, low + 5)
    ports = await pool.acquire(LOOPBACK)
    assert ports.rtp_port == low + 4
    assert pool.in_use == 1
    with pytest.raises(MediaError, match="no free RTP port"):
        await pool.acquire(LOOPBACK)
    await ports.wait_closed()
    assert pool.in_use == 0
    assert can_bind(low + 2)  # the half-bound pair was let go


async def test_non_local_host_is_a_clear_error(pool: PortPool) -> None:
    with pytest.raises(MediaError) as caught:
        await pool.acquire("192.0.2.1")  # TEST-NET-1: never a local address
    assert caught.value.status_hint == 500
    assert "cannot bind RTP port 192.0.2.1" in caught.value.cause
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.EADDRNOTAVAIL
    assert pool.in_use == 0


async def test_concurrent_acquires_get_distinct_pairs(pool: PortPool) -> None:
    got = await asyncio.gather(*(pool.acquire(LOOPBACK) for _ in range(5)))
    assert len({ports.rtp_port for ports in got}) == 5
    assert all(ports.rtp_port % 2 == 0 for ports in got)
    assert pool.in_use == 5
    await asyncio.gather(*(ports.wait_closed() for ports in got))
    assert pool.in_use == 0


async def test_out_of_descriptors_is_a_503_not_a_500(pool: PortPool) -> None:
    # A real EMFILE: the soft descriptor limit lowered to the lowest free descriptor
    # number, so the next socket() of this process fails. Restored at once after.
    import os
    import resource

    open_fds = {int(name) for name in os.listdir("/proc/self/fd")}
    lowest_free = next(n for n in range(len(open_fds) + 1) if n not in open_fds)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        with pytest.raises(MediaError) as caught:
            await pool.acquire(LOOPBACK)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.EMFILE
    assert caught.value.status_hint == 503
    assert pool.in_use == 0
    ports = await pool.acquire(LOOPBACK)  # and it works again once descriptors are there
    ports.close()
