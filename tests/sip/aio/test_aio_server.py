"""SipServer with the real SipEndpoint on loopback sockets, raw-socket peers as the far end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from sip_aio_peers import WAIT, TcpListener, TcpPeer, UdpPeer, closed_port, sip_request

from app.sip.aio import SipServer, SipServerConfig
from app.sip.endpoint import EndpointConfig
from app.sip.events import (
    Event,
    MessageDropped,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from app.sip.message import Headers, Request, make_response
from app.sip.parser import parse_message
from app.sip.timers import TimerConfig, TimerName
from app.sip.transactions.keys import ClientTransactionId

# Short T1 for the tests that need the real loop to run a retransmission timer.
FAST_TIMERS = TimerConfig(t1=0.02, t2=0.08, t4=0.1)


@dataclass
class RecordingTU:
    """Queues every event; `react` (if set) runs inside handle_event."""

    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    react: Callable[[Event], None] | None = None

    def handle_event(self, event: Event) -> None:
        self.events.put_nowait(event)
        if self.react is not None:
            self.react(event)

    async def next(self, kind: type[Event] | None = None) -> Event:
        while True:
            event = await asyncio.wait_for(self.events.get(), WAIT)
            if kind is None or isinstance(event, kind):
                return event


@pytest.fixture
def tu() -> RecordingTU:
    return RecordingTU()


async def _server(tu: RecordingTU, *, timers: TimerConfig | None = None, **kw: object) -> SipServer:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, **kw}
    config = SipServerConfig(**values)  # type: ignore[arg-type]
    endpoint_config = EndpointConfig(timers=timers or TimerConfig())
    server = SipServer(config, tu, endpoint_config=endpoint_config)
    await server.start()
    return server


@pytest.fixture
async def server(tu: RecordingTU) -> AsyncIterator[SipServer]:
    server = await _server(tu)
    yield server
    await server.stop()


def _via(transport: str, branch: str = "z9hG4bK-aio-1") -> str:
    # sent-by deliberately not the real source: the response must go to the source
    # anyway (RFC 3261 §18.2.2 received, RFC 3581 rport).
    return f"SIP/2.0/{transport} 10.9.9.9:5099;branch={branch};rport"


def _out_request(uri: str, method: str = "OPTIONS") -> Request:
    return Request(
        method=method,
        uri=uri,
        headers=Headers(
            [
                ("From", "<sip:callctl@127.0.0.1>;tag=ours"),
                ("To", f"<{uri}>"),
                ("Call-ID", f"out-{method}@127.0.0.1"),
                ("CSeq", f"1 {method}"),
            ]
        ),
    )


async def test_endpoint_gets_the_bound_port(server: SipServer) -> None:
    host, port = server.local_addr
    assert server.running
    assert (server.endpoint.config.local_host, server.endpoint.config.local_port) == (host, port)
    assert server.endpoint.config.transports == ("udp", "tcp")


async def test_udp_options_answered_at_source_with_received_and_rport(
    server: SipServer, tu: RecordingTU
) -> None:
    peer = await UdpPeer.open()
    try:
        peer.send(sip_request(via=_via("UDP")), server.local_addr)
        data, source = await peer.recv()
        assert source == server.local_addr
        resp = parse_message(data)
        assert resp.start_line == "SIP/2.0 200 OK"
        via = resp.top_via
        assert via.received == "127.0.0.1"
        assert via.rport == peer.addr[1]
        assert "OPTIONS" in (resp.headers.get("Allow") or "")
        assert resp.headers.get("Accept") == "application/sdp"
        assert tu.events.empty()  # OPTIONS is answered by the endpoint itself
        stats = server.stats()
        assert stats["udp_datagrams_received"] == 1
        assert stats["endpoint_answered_200"] == 1
    finally:
        peer.close()


async def test_tcp_options_answered_on_the_same_connection(server: SipServer) -> None:
    peer = await TcpPeer.connect(server.local_addr)
    try:
        await peer.send(sip_request(via=_via("TCP")))
        resp = parse_message(await peer.read_message(), stream=True)
        assert resp.start_line == "SIP/2.0 200 OK"
        assert resp.top_via.received == "127.0.0.1"
        assert resp.top_via.rport == peer.addr[1]
        assert server.stats()["tcp_connections_opened"] == 0
    finally:
        await peer.close()


async def test_tu_answers_from_inside_handle_event(server: SipServer, tu: RecordingTU) -> None:
    def answer(event: Event) -> None:
        if isinstance(event, RequestReceived):
            server.send_response(event.server_tx, make_response(event.request, 202))

    tu.react = answer
    peer = await UdpPeer.open()
    try:
        peer.send(sip_request("INFO", via=_via("UDP")), server.local_addr)
        event = await tu.next(RequestReceived)
        assert isinstance(event, RequestReceived)
        assert event.request.method == "INFO"
        assert event.source == peer.addr
        data, _ = await peer.recv()
        assert data.startswith(b"SIP/2.0 202 ")
        # The retransmitted request gets the same response from the transaction.
        peer.send(sip_request("INFO", via=_via("UDP")), server.local_addr)
        again, _ = await peer.recv()
        assert again == data
        assert server.stats()["events_dispatched"] == 1
    finally:
        peer.close()


async def test_tcp_connection_is_held_while_a_transaction_uses_it(
    server: SipServer, tu: RecordingTU
) -> None:
    peer = await TcpPeer.connect(server.local_addr)
    try:
        await peer.send(sip_request("INFO", via=_via("TCP")))
        event = await tu.next(RequestReceived)
        assert isinstance(event, RequestReceived)
        assert server.connection_in_use(event.source, "tcp")
        server.send_response(event.server_tx, make_response(event.request, 200))
        assert (await peer.read_message()).startswith(b"SIP/2.0 200 ")
        assert not server.connection_in_use(event.source, "tcp")
    finally:
        await peer.close()


async def test_udp_client_transaction_round_trip(server: SipServer, tu: RecordingTU) -> None:
    peer = await UdpPeer.open()
    try:
        host, port = peer.addr
        tx = server.send_request(_out_request(f"sip:peer@{host}:{port}"))
        assert isinstance(tx, ClientTransactionId)
        data, source = await peer.recv()
        assert source == server.local_addr
        req = parse_message(data)
        assert isinstance(req, Request)
        assert req.top_via.transport == "UDP"
        assert req.top_via.branch == tx.branch
        peer.send(make_response(req, 200).to_bytes(), server.local_addr)
        event = await tu.next(ResponseReceived)
        assert isinstance(event, ResponseReceived)
        assert event.client_tx == tx
        assert event.response.status == 200
    finally:
        peer.close()


async def test_transport_parameter_picks_tcp(server: SipServer, tu: RecordingTU) -> None:
    listener = await TcpListener.open()
    try:
        host, port = listener.addr
        # Upper-case parameter value, as SIPp writes it.
        tx = server.send_request(_out_request(f"sip:peer@{host}:{port};transport=TCP"))
        reader, writer = await listener.first_connection()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        req = parse_message(head, stream=True)
        assert isinstance(req, Request)
        assert req.top_via.transport == "TCP"
        assert server.connection_in_use((host, port), "tcp")
        writer.write(make_response(req, 200).to_bytes())
        event = await tu.next(ResponseReceived)
        assert isinstance(event, ResponseReceived)
        assert event.client_tx == tx
        assert event.transport.lower() == "tcp"
        assert not server.connection_in_use((host, port), "tcp")
        assert server.stats()["tcp_connections_opened"] == 1
    finally:
        await listener.close()


async def test_connect_failure_reaches_the_tu_as_transport_error(
    server: SipServer, tu: RecordingTU
) -> None:
    port = closed_port()
    tx = server.send_request(_out_request(f"sip:peer@127.0.0.1:{port};transport=tcp"))
    event = await tu.next(TransportErrorOccurred)
    assert isinstance(event, TransportErrorOccurred)
    assert event.tx == tx
    assert f"127.0.0.1:{port}" in event.error
    assert server.endpoint.transaction_state(tx) is None  # RFC 3261 §17.1.4: terminated
    assert not server.connection_in_use(("127.0.0.1", port), "tcp")
    assert server.stats()["transport_errors_reported"] == 1


async def test_timer_drives_retransmissions_and_timeout(tu: RecordingTU) -> None:
    server = await _server(tu, timers=FAST_TIMERS)
    peer = await UdpPeer.open()
    try:
        host, port = peer.addr
        tx = server.send_request(_out_request(f"sip:peer@{host}:{port}"))
        assert server.timer_deadline is not None
        first, _ = await peer.recv()
        again, _ = await peer.recv()  # Timer E fired through the loop's call_at handle
        assert again == first
        event = await tu.next(TransactionTimedOut)  # Timer F = 64*T1
        assert isinstance(event, TransactionTimedOut)
        assert event.tx == tx
        assert event.timer is TimerName.F
        assert server.timer_deadline is None  # nothing left to time: the handle is gone
        assert server.stats()["timer_fires"] >= 2
    finally:
        peer.close()
        await server.stop()


async def test_stop_cancels_the_timer_and_closes_sockets(tu: RecordingTU) -> None:
    server = await _server(tu, timers=FAST_TIMERS)
    peer = await UdpPeer.open()
    host, port = peer.addr
    server.send_request(_out_request(f"sip:peer@{host}:{port}"))
    assert server.timer_deadline is not None
    bound = server.local_addr
    await server.stop()
    assert server.timer_deadline is None
    assert not server.running
    with pytest.raises(RuntimeError):
        _ = server.endpoint
    # The port is free again for both transports.
    again = await _server(tu, port=bound[1])
    assert again.local_addr == bound
    await again.stop()
    peer.close()


async def test_garbage_is_dropped_and_reported(server: SipServer, tu: RecordingTU) -> None:
    peer = await UdpPeer.open()
    try:
        peer.send(b"this is not SIP at all\r\n\r\n", server.local_addr)
        event = await tu.next(MessageDropped)
        assert isinstance(event, MessageDropped)
        assert event.source == peer.addr
        assert server.stats()["endpoint_dropped_garbage"] == 1
    finally:
        peer.close()


async def test_a_failing_tu_does_not_stop_the_server(server: SipServer, tu: RecordingTU) -> None:
    def explode(event: Event) -> None:
        raise RuntimeError("TU bug")

    tu.react = explode
    peer = await UdpPeer.open()
    try:
        peer.send(sip_request("INFO", via=_via("UDP", "z9hG4bK-a")), server.local_addr)
        await tu.next(RequestReceived)
        tu.react = None
        peer.send(sip_request("OPTIONS", via=_via("UDP", "z9hG4bK-b")), server.local_addr)
        data, _ = await peer.recv()
        assert data.startswith(b"SIP/2.0 200 ")
        assert server.stats()["tu_errors"] == 1
    finally:
        peer.close()


async def test_requests_need_an_ip_or_resolve(server: SipServer) -> None:
    with pytest.raises(ValueError, match="resolve"):
        server.send_request(_out_request("sip:peer@example.invalid"))
    target = await server.resolve(_out_request("sip:peer@localhost:5099;transport=tcp"))
    assert target.addr[1] == 5099
    assert target.addr[0] in ("127.0.0.1", "::1")
    assert target.transport == "tcp"


async def test_udp_only_server_refuses_tcp_targets(tu: RecordingTU) -> None:
    server = await _server(tu, transports=("udp",))
    try:
        with pytest.raises(ValueError, match="not enabled"):
            server.send_request(_out_request("sip:peer@127.0.0.1:5099;transport=tcp"))
        assert server.endpoint.config.transports == ("udp",)
    finally:
        await server.stop()


def test_config_from_settings() -> None:
    settings = SimpleNamespace(
        sip_host="0.0.0.0",
        sip_port=5070,
        sip_transports=("tcp",),
        public_address="203.0.113.5:5080",
    )
    config = SipServerConfig.from_settings(settings, tcp_idle_timeout=30.0)
    assert (config.host, config.port, config.transports) == ("0.0.0.0", 5070, ("tcp",))
    assert (config.advertised_host, config.advertised_port) == ("203.0.113.5", 5080)
    assert config.tcp_idle_timeout == 30.0
    v6 = SipServerConfig.from_settings(
        SimpleNamespace(
            sip_host="::", sip_port=5060, sip_transports=("udp",), public_address="[2001:db8::5]"
        )
    )
    assert (v6.advertised_host, v6.advertised_port) == ("2001:db8::5", None)


async def test_cancel_and_stateless_ack_go_to_the_peer(server: SipServer, tu: RecordingTU) -> None:
    peer = await UdpPeer.open()
    try:
        host, port = peer.addr
        uri = f"sip:peer@{host}:{port}"
        invite_tx = server.send_request(_out_request(uri, "INVITE"))
        data, _ = await peer.recv()
        invite = parse_message(data)
        assert isinstance(invite, Request)
        peer.send(make_response(invite, 180, to_tag="peer").to_bytes(), server.local_addr)
        ringing = await tu.next(ResponseReceived)
        assert isinstance(ringing, ResponseReceived)
        assert ringing.response.status == 180

        cancel_tx = server.send_cancel(invite_tx)
        assert cancel_tx is not None
        data, _ = await peer.recv()
        cancel = parse_message(data)
        assert isinstance(cancel, Request)
        assert cancel.method == "CANCEL"
        assert cancel.top_via.branch == invite.top_via.branch  # RFC 3261 §9.1

        # A request sent stateless takes its destination from the URI, like send_request.
        ack = _out_request(uri, "ACK")
        server.send_stateless(ack)
        data, _ = await peer.recv()
        assert data.startswith(b"ACK " + uri.encode())
        with pytest.raises(ValueError, match="dest and transport"):
            server.send_stateless(make_response(invite, 200))
    finally:
        peer.close()


async def test_a_core_failure_on_input_does_not_stop_the_server(
    server: SipServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = server.endpoint
    real_receive = endpoint.receive
    calls = 0

    def flaky(data: bytes, addr: tuple[str, int], transport: str, now: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("core bug")
        real_receive(data, addr, transport, now)

    monkeypatch.setattr(endpoint, "receive", flaky)
    peer = await UdpPeer.open()
    try:
        peer.send(sip_request(via=_via("UDP", "z9hG4bK-c1")), server.local_addr)
        peer.send(sip_request(via=_via("UDP", "z9hG4bK-c2")), server.local_addr)
        data, _ = await peer.recv()
        assert b"branch=z9hG4bK-c2" in data
        assert server.stats()["core_errors"] == 1
    finally:
        peer.close()


async def test_response_reopens_to_sent_by_when_the_connection_is_gone(
    server: SipServer, tu: RecordingTU
) -> None:
    listener = await TcpListener.open()  # the peer's listening port, named in its Via
    host, port = listener.addr
    peer = await TcpPeer.connect(server.local_addr)
    try:
        await peer.send(sip_request("INFO", via=f"SIP/2.0/TCP {host}:{port};branch=z9hG4bK-g"))
        event = await tu.next(RequestReceived)
        assert isinstance(event, RequestReceived)
        await peer.close()
        await asyncio.wait_for(server.transport_layer.wait_closed(event.source), WAIT)
        assert not server.transport_layer.has_connection(event.source)
        server.send_response(event.server_tx, make_response(event.request, 200))
        # RFC 3261 §18.2.2: a new connection to the Via sent-by carries the response.
        reader, _ = await listener.first_connection()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"SIP/2.0 200 ")
        assert b"branch=z9hG4bK-g" in head
    finally:
        await listener.close()
