"""SipTransportLayer on real loopback sockets, with a recording sink in place of the server."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from sip_aio_peers import WAIT, TcpListener, TcpPeer, UdpPeer, closed_port, sip_request

from app.sip.aio.transport import (
    MAX_TCP_CONNECTIONS,
    Addr,
    SipTransportLayer,
    TransportConfig,
    parse_transports,
)


@dataclass
class Failure:
    data: bytes
    addr: Addr
    transport: str
    error: OSError
    token: object


@dataclass
class RecordingSink:
    """Queues what the layer reports; `in_use` answers connection_in_use."""

    messages: asyncio.Queue[tuple[bytes, Addr, str]] = field(default_factory=asyncio.Queue)
    failures: asyncio.Queue[Failure] = field(default_factory=asyncio.Queue)
    in_use: bool = False
    in_use_asked: asyncio.Event = field(default_factory=asyncio.Event)

    def message_received(self, data: bytes, addr: Addr, transport: str) -> None:
        self.messages.put_nowait((data, addr, transport))

    def send_failed(
        self, data: bytes, addr: Addr, transport: str, error: OSError, token: object
    ) -> None:
        self.failures.put_nowait(Failure(data, addr, transport, error, token))

    def connection_in_use(self, addr: Addr, transport: str) -> bool:
        self.in_use_asked.set()
        return self.in_use

    async def next_message(self) -> tuple[bytes, Addr, str]:
        return await asyncio.wait_for(self.messages.get(), WAIT)

    async def next_failure(self) -> Failure:
        return await asyncio.wait_for(self.failures.get(), WAIT)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


async def _layer(sink: RecordingSink, **kw: object) -> SipTransportLayer:
    config = TransportConfig(host="127.0.0.1", port=0, **kw)  # type: ignore[arg-type]
    layer = SipTransportLayer(config, sink)
    await layer.start()
    return layer


@pytest.fixture
async def layer(sink: RecordingSink) -> AsyncIterator[SipTransportLayer]:
    layer = await _layer(sink)
    yield layer
    await layer.stop()


MSG = sip_request()


def test_parse_transports() -> None:
    assert parse_transports("UDP, tcp") == ("udp", "tcp")
    assert parse_transports(["tcp", "TCP"]) == ("tcp",)
    with pytest.raises(ValueError, match="unsupported"):
        parse_transports("udp,sctp")
    with pytest.raises(ValueError, match="no SIP transport"):
        parse_transports(" , ")


async def test_binds_udp_and_tcp_on_one_port(layer: SipTransportLayer, sink: RecordingSink) -> None:
    host, port = layer.local_addr
    assert host == "127.0.0.1"
    assert port > 0
    tcp = await TcpPeer.connect(layer.local_addr)  # TCP listens on the same number
    udp = await UdpPeer.open()
    try:
        udp.send(MSG, layer.local_addr)
        await tcp.send(MSG)
        got = {(await sink.next_message())[2], (await sink.next_message())[2]}
        assert got == {"udp", "tcp"}
    finally:
        await tcp.close()
        udp.close()


async def test_udp_round_trip(layer: SipTransportLayer, sink: RecordingSink) -> None:
    peer = await UdpPeer.open()
    try:
        peer.send(MSG, layer.local_addr)
        data, addr, transport = await sink.next_message()
        assert (data, addr, transport) == (MSG, peer.addr, "udp")

        layer.send(b"SIP/2.0 200 OK\r\n\r\n", addr, "UDP")  # transport name in any case
        reply, source = await peer.recv()
        assert reply == b"SIP/2.0 200 OK\r\n\r\n"
        assert source == layer.local_addr  # answered from the listening socket
        stats = layer.stats_dict()
        assert stats["udp_datagrams_received"] == 1
        assert stats["udp_datagrams_sent"] == 1
    finally:
        peer.close()


async def test_udp_keepalive_datagrams_are_dropped(
    layer: SipTransportLayer, sink: RecordingSink
) -> None:
    peer = await UdpPeer.open()
    try:
        peer.send(b"\r\n\r\n", layer.local_addr)
        peer.send(MSG, layer.local_addr)
        data, _, _ = await sink.next_message()  # the keep-alive never reaches the sink
        assert data == MSG
        assert layer.stats.udp_keepalives_received == 1
    finally:
        peer.close()


async def test_udp_send_to_a_name_fails_without_blocking(
    layer: SipTransportLayer, sink: RecordingSink
) -> None:
    layer.send(MSG, ("example.invalid", 5060), "udp")
    failure = await sink.next_failure()
    assert failure.error.errno == errno.EDESTADDRREQ
    assert failure.transport == "udp"


async def test_tcp_framing_across_chunked_sends(
    layer: SipTransportLayer, sink: RecordingSink
) -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    first = sip_request("INFO", body=body, call_id="a")
    second = sip_request("OPTIONS", call_id="b")
    third = sip_request("OPTIONS", call_id="c")
    peer = await TcpPeer.connect(layer.local_addr)
    try:
        # Split inside the start line, inside a header, inside the body; then two
        # messages in one segment.
        stream = first + second + third
        cuts = [5, 40, len(first) - 10, len(first) + len(second) + len(third)]
        start = 0
        for cut in cuts:
            await peer.send(stream[start:cut])
            start = cut
        got = [await sink.next_message() for _ in range(3)]
        assert [g[0] for g in got] == [first, second, third]
        assert {(g[1], g[2]) for g in got} == {(peer.addr, "tcp")}
        assert layer.stats.tcp_messages_received == 3
    finally:
        await peer.close()


async def test_tcp_ping_gets_pong(layer: SipTransportLayer, sink: RecordingSink) -> None:
    peer = await TcpPeer.connect(layer.local_addr)
    try:
        await peer.send(b"\r\n\r\n")  # RFC 5626 §3.5.1 ping
        assert await peer.read_exactly(2) == b"\r\n"
        # A ping split over two segments is answered too, and a message after it frames.
        await peer.send(b"\r\n")
        await peer.send(b"\r\n" + MSG)
        assert await peer.read_exactly(2) == b"\r\n"
        data, _, _ = await sink.next_message()
        assert data == MSG
        assert layer.stats.tcp_pings_received == 2
    finally:
        await peer.close()


async def test_tcp_response_reuses_the_inbound_connection(
    layer: SipTransportLayer, sink: RecordingSink
) -> None:
    peer = await TcpPeer.connect(layer.local_addr)
    try:
        await peer.send(MSG)
        _, addr, _ = await sink.next_message()
        response = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        layer.send(response, addr, "tcp")
        assert await peer.read_message() == response
        assert layer.stats.tcp_connections_opened == 0
        assert layer.stats.tcp_connections_accepted == 1
        assert layer.connection_count() == 1
    finally:
        await peer.close()


async def test_tcp_outbound_opens_one_connection_and_reuses_it(
    layer: SipTransportLayer, sink: RecordingSink
) -> None:
    listener = await TcpListener.open()
    try:
        one = sip_request(call_id="one")
        two = sip_request(call_id="two")
        layer.send(one, listener.addr, "tcp")  # queued while connecting
        layer.send(two, listener.addr, "tcp")
        reader, writer = await listener.first_connection()
        expected = one + two
        assert await asyncio.wait_for(reader.readexactly(len(expected)), WAIT) == expected
        three = sip_request(call_id="three")
        layer.send(three, listener.addr, "tcp")  # over the open connection
        assert await asyncio.wait_for(reader.readexactly(len(three)), WAIT) == three
        # The peer answers on the same connection; the sink sees it from the address the
        # connection was opened to.
        answer = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        writer.write(answer)
        data, addr, transport = await sink.next_message()
        assert (data, addr, transport) == (answer, listener.addr, "tcp")
        assert len(listener.accepted) == 1
        assert layer.stats.tcp_connections_opened == 1
        assert layer.has_connection(listener.addr)
    finally:
        await listener.close()


async def test_tcp_connect_failure_is_reported(
    layer: SipTransportLayer, sink: RecordingSink
) -> None:
    dead = ("127.0.0.1", closed_port())
    layer.send(b"first", dead, "tcp", "tx-1")
    layer.send(b"second", dead, "tcp", "tx-2")
    failures = [await sink.next_failure(), await sink.next_failure()]
    assert [(f.data, f.token) for f in failures] == [(b"first", "tx-1"), (b"second", "tx-2")]
    assert all(f.addr == dead and f.transport == "tcp" for f in failures)
    assert failures[0].error.errno == errno.ECONNREFUSED
    assert layer.stats.tcp_connect_failures == 1
    assert layer.stats.send_failures == 2


async def test_tcp_framing_error_closes_the_connection(
    layer: SipTransportLayer, sink: RecordingSink
) -> None:
    peer = await TcpPeer.connect(layer.local_addr)
    try:
        # RFC 3261 §18.3: Content-Length is mandatory on a stream.
        await peer.send(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n")
        assert await peer.read_eof() == b""
        assert layer.stats.tcp_framing_errors == 1
        assert sink.messages.empty()
    finally:
        await peer.close()


async def test_messages_before_a_framing_error_are_delivered(
    layer: SipTransportLayer, sink: RecordingSink
) -> None:
    good = sip_request(call_id="good")
    no_length = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n"
    peer = await TcpPeer.connect(layer.local_addr)
    try:
        await peer.send(good + no_length)  # one segment
        data, _, _ = await sink.next_message()
        assert data == good
        assert await peer.read_eof() == b""  # closed at once, not at the next segment
        assert layer.stats.tcp_framing_errors == 1
    finally:
        await peer.close()


async def test_idle_connection_is_closed(sink: RecordingSink) -> None:
    layer = await _layer(sink, tcp_idle_timeout=0.05)
    peer = await TcpPeer.connect(layer.local_addr)
    try:
        await peer.send(MSG)
        await sink.next_message()
        assert await peer.read_eof() == b""  # closed by us, not by the peer
        assert layer.stats.tcp_idle_closes == 1
        assert layer.connection_count() == 0
    finally:
        await peer.close()
        await layer.stop()


async def test_idle_connection_in_use_stays_open(sink: RecordingSink) -> None:
    layer = await _layer(sink, tcp_idle_timeout=0.05)
    sink.in_use = True
    peer = await TcpPeer.connect(layer.local_addr)
    try:
        await peer.send(MSG)
        _, addr, _ = await sink.next_message()
        await asyncio.wait_for(sink.in_use_asked.wait(), WAIT)
        assert layer.has_connection(addr)  # idle, but a transaction still needs it
        assert layer.stats.tcp_idle_closes == 0
        sink.in_use = False
        assert await peer.read_eof() == b""
        assert layer.stats.tcp_idle_closes == 1
    finally:
        await peer.close()
        await layer.stop()


async def test_connection_limit_refuses_extra_inbound(sink: RecordingSink) -> None:
    assert MAX_TCP_CONNECTIONS >= 100
    layer = await _layer(sink, max_tcp_connections=1)
    first = await TcpPeer.connect(layer.local_addr)
    second = await TcpPeer.connect(layer.local_addr)
    try:
        assert await second.read_eof() == b""
        await first.send(MSG)
        data, _, _ = await sink.next_message()
        assert data == MSG
        assert layer.stats.tcp_connections_rejected == 1
    finally:
        await first.close()
        await second.close()
        await layer.stop()


async def test_stop_closes_connections_and_later_sends_fail(sink: RecordingSink) -> None:
    layer = await _layer(sink)
    peer = await TcpPeer.connect(layer.local_addr)
    await peer.send(MSG)
    _, addr, _ = await sink.next_message()
    await layer.stop()
    assert await peer.read_eof() == b""
    layer.send(MSG, addr, "tcp")
    layer.send(MSG, addr, "udp")
    failures = [await sink.next_failure(), await sink.next_failure()]
    assert [f.error.errno for f in failures] == [errno.ENOTCONN, errno.ENOTCONN]
    await peer.close()


async def test_udp_only_config_has_no_tcp(sink: RecordingSink) -> None:
    layer = await _layer(sink, transports=("udp",))
    try:
        with pytest.raises(OSError):
            await TcpPeer.connect(layer.local_addr)
        layer.send(MSG, ("127.0.0.1", 9), "tcp")
        failure = await sink.next_failure()
        assert failure.error.errno == errno.ENOTCONN
    finally:
        await layer.stop()
