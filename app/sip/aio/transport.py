"""asyncio UDP and TCP sockets for the SIP core (RFC 3261 §18, RFC 5626 §3.5.1).

`SipTransportLayer` owns the sockets and nothing else: it hands every datagram and every
framed TCP message to a `TransportSink` (the `SipServer`), and sends the bytes it is given to
an address over UDP or over TCP (reusing the connection to that address, else opening one).
It knows no SIP beyond stream framing and keep-alives; transactions, timers and the choice of
transport live above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass, fields
from typing import Protocol, TypeAlias, cast

from app.sip.aio.target import is_ip_literal
from app.sip.errors import SipParseError
from app.sip.parser import KeepAlivePing, KeepAlivePong, StreamFramer

__all__ = [
    "MAX_PENDING_CONNECT_BYTES",
    "MAX_TCP_CONNECTIONS",
    "MAX_TCP_WRITE_BUFFER",
    "SUPPORTED_TRANSPORTS",
    "TCP_CONNECT_TIMEOUT",
    "TCP_IDLE_TIMEOUT",
    "Addr",
    "SipTransportLayer",
    "TransportConfig",
    "TransportSink",
    "TransportStats",
    "parse_transports",
]

log = logging.getLogger(__name__)

Addr: TypeAlias = tuple[str, int]

#: Transports this layer can bind (lower case, as in `EndpointConfig.transports`).
SUPPORTED_TRANSPORTS = ("udp", "tcp")

#: Seconds without traffic after which a TCP connection that no transaction uses is closed.
#: Long enough to outlive any non-INVITE transaction (Timer F, 32 s) and the usual RFC 5626
#: keep-alive interval (the UA pings every 95-120 s, §4.4.1), short enough that abandoned
#: connections do not pile up.
TCP_IDLE_TIMEOUT = 300.0

#: Seconds allowed for an outgoing TCP connect. Below Timer B/F (64*T1 = 32 s) so that a dead
#: peer surfaces as a transport error (RFC 3261 §17.1.4) before the transaction times out.
TCP_CONNECT_TIMEOUT = 10.0

#: Open TCP connections at most (inbound and outbound): beyond it new inbound connections are
#: refused and outbound sends fail, so a flood of idle sockets cannot exhaust descriptors.
MAX_TCP_CONNECTIONS = 1024

#: Bytes queued for a peer that does not read before the connection is dropped as stuck.
MAX_TCP_WRITE_BUFFER = 1 << 20

#: Bytes queued for an address while its connection is being opened.
MAX_PENDING_CONNECT_BYTES = 256 * 1024

# Seconds stop() waits for the sockets it closed to be released.
_CLOSE_WAIT = 2.0

# RFC 5626 §3.5.1: the "pong" answering a double-CRLF "ping" is a single CRLF.
_PONG = b"\r\n"


def parse_transports(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`"udp,tcp"` (any case, spaces allowed) -> `("udp", "tcp")`; raises ValueError."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        name = item.strip().lower()
        if not name:
            continue
        if name not in SUPPORTED_TRANSPORTS:
            raise ValueError(f"unsupported SIP transport {item.strip()!r}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no SIP transport configured")
    return tuple(out)


def _norm_addr(peer: object) -> Addr:
    """(host, port) from a socket address (IPv6 4-tuples lose flowinfo and scope id)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    raise ValueError(f"not an IP socket address: {peer!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportConfig:
    """Where to listen and the TCP limits. `port=0` picks one port free for UDP and TCP."""

    host: str = "0.0.0.0"
    port: int = 5060
    transports: tuple[str, ...] = SUPPORTED_TRANSPORTS
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT
    tcp_connect_timeout: float = TCP_CONNECT_TIMEOUT
    max_tcp_connections: int = MAX_TCP_CONNECTIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "transports", parse_transports(self.transports))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"bad SIP port {self.port}")
        if self.tcp_idle_timeout <= 0 or self.tcp_connect_timeout <= 0:
            raise ValueError("TCP timeouts must be positive")


@dataclass(slots=True)
class TransportStats:
    """Counters since start (Prometheus counters, except the `*_active` gauge)."""

    udp_datagrams_received: int = 0
    udp_datagrams_sent: int = 0
    udp_keepalives_received: int = 0
    udp_errors: int = 0
    tcp_connections_accepted: int = 0
    tcp_connections_opened: int = 0
    tcp_connections_closed: int = 0
    tcp_connections_rejected: int = 0
    tcp_connect_failures: int = 0
    tcp_idle_closes: int = 0
    tcp_messages_received: int = 0
    tcp_messages_sent: int = 0
    tcp_pings_received: int = 0
    tcp_pongs_received: int = 0
    tcp_framing_errors: int = 0
    tcp_write_overflows: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    send_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TransportSink(Protocol):
    """What the transport layer reports to (the `SipServer`)."""

    def message_received(self, data: bytes, addr: Addr, transport: str) -> None:
        """One UDP datagram or one framed TCP message arrived from `addr`."""

    def send_failed(
        self, data: bytes, addr: Addr, transport: str, error: OSError, token: object
    ) -> None:
        """`data` could not be sent to `addr` (no route, connect refused or timed out).

        `token` is what the caller passed to `send` (the transaction id, for the core).
        """

    def connection_in_use(self, addr: Addr, transport: str) -> bool:
        """True while a transaction still needs the connection to `addr` (no idle close)."""


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, layer: SipTransportLayer) -> None:
        self._layer = layer
        self.lost: asyncio.Future[None] = layer._loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self._layer._datagram_received(data, _norm_addr(addr))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) on the shared socket: counted, not fatal.
        self._layer.stats.udp_errors += 1
        log.debug("UDP socket error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    """One TCP connection, inbound or outbound, with its own stream framer."""

    def __init__(self, layer: SipTransportLayer, *, key: Addr | None = None) -> None:
        self._layer = layer
        # Outbound connections are filed under the address the core asked for, inbound
        # ones under the peer's socket address; messages are reported with this address.
        self.outbound = key is not None
        self.key: Addr = key if key is not None else ("", 0)
        self.transport: asyncio.Transport | None = None
        self.peer: Addr = ("", 0)
        self.closed = False
        self.last_activity = 0.0
        self._framer = StreamFramer()
        self._idle_handle: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future[None] = layer._loop.create_future()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, don't check.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = _norm_addr(transport.get_extra_info("peername"))
        if not self.outbound:
            self.key = self.peer
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._layer._connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        layer = self._layer
        layer.stats.bytes_received += len(data)
        self.touch()
        try:
            items = self._framer.feed(data)
        except SipParseError as exc:
            self._framing_error(exc)
            return
        for item in items:
            if self.closed:
                return
            if isinstance(item, KeepAlivePing):
                # RFC 5626 §3.5.1: answer a double-CRLF ping with a single-CRLF pong.
                layer.stats.tcp_pings_received += 1
                self.write(_PONG)
            elif isinstance(item, KeepAlivePong):
                layer.stats.tcp_pongs_received += 1
            else:
                layer.stats.tcp_messages_received += 1
                layer._sink.message_received(item, self.key, "tcp")
        if self._framer.failed and not self.closed:
            # The framer handed out the messages before the bad one and keeps the error
            # for the next feed: collect it now instead of waiting for more bytes.
            try:
                self._framer.feed(b"")
            except SipParseError as exc:
                self._framing_error(exc)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_idle()
        if not self.lost.done():
            self.lost.set_result(None)
        self._layer._connection_lost(self)

    # our API

    def touch(self) -> None:
        self.last_activity = self._layer._loop.time()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self._layer.stats.bytes_sent += len(data)
        self.touch()
        if self.transport.get_write_buffer_size() > MAX_TCP_WRITE_BUFFER:
            # The peer does not read: drop it rather than buffer without end.
            self._layer.stats.tcp_write_overflows += 1
            log.warning("TCP peer %s:%d does not read; closing", *self.peer)
            self.abort()

    def is_usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def arm_idle(self, delay: float) -> None:
        self._cancel_idle()
        self._idle_handle = self._layer._loop.call_later(delay, self._idle_check)

    def _cancel_idle(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _idle_check(self) -> None:
        self._idle_handle = None
        if self.closed:
            return
        layer = self._layer
        timeout = layer.config.tcp_idle_timeout
        left = self.last_activity + timeout - layer._loop.time()
        if left > 0:
            self.arm_idle(left)
        elif layer._sink.connection_in_use(self.key, "tcp"):
            self.arm_idle(timeout)
        else:
            layer.stats.tcp_idle_closes += 1
            log.debug("closing idle TCP connection to %s:%d", *self.peer)
            self.close()

    def _framing_error(self, exc: SipParseError) -> None:
        # RFC 3261 §18.3: with the framing lost no later byte can be trusted to start a
        # message, so the connection goes (StreamFramer marks this `close_connection`).
        # Decision: no 400 first. The framer keeps no copy of the offending header block,
        # and a response built from a guess at where it starts could carry another
        # message's Via/CSeq and match the wrong transaction at the peer. The close is
        # graceful, so responses already written still reach the peer.
        self.closed = True
        self._cancel_idle()
        self._layer.stats.tcp_framing_errors += 1
        log.info("TCP framing error from %s:%d: %s; closing", *self.peer, exc.msg)
        self.close()


class SipTransportLayer:
    """UDP and TCP sockets on one (host, port), feeding a `TransportSink`.

    Use: `await layer.start()`, then `layer.send(data, addr, transport)`; `await layer.stop()`.
    """

    def __init__(
        self,
        config: TransportConfig,
        sink: TransportSink,
    ) -> None:
        self.config = config
        self.stats = TransportStats()
        self._sink = sink
        self._loop: asyncio.AbstractEventLoop  # the running loop, set by start()
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: _UdpProtocol
        self._tcp_server: asyncio.Server | None = None
        self._conns: dict[Addr, _TcpConnection] = {}
        self._all_conns: set[_TcpConnection] = set()
        self._connecting: dict[Addr, list[tuple[bytes, object]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bound: Addr | None = None
        self._stopping = False

    # lifecycle

    @property
    def local_addr(self) -> Addr:
        """The bound (host, port); valid after `start()`."""
        if self._bound is None:
            raise RuntimeError("transport layer not started")
        return self._bound

    @property
    def transports(self) -> tuple[str, ...]:
        return self.config.transports

    async def start(self) -> None:
        """Bind the configured transports on (host, port). Raises OSError if a bind fails."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        host, port = self.config.host, self.config.port
        attempts = 20 if port == 0 else 1
        last_error: OSError | None = None
        for _ in range(attempts):
            try:
                await self._bind(host, port)
            except OSError as exc:
                await self._close_sockets()
                last_error = exc
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    continue  # the UDP port we got is taken for TCP: try another
                raise
            return
        assert last_error is not None
        raise last_error

    async def _bind(self, host: str, port: int) -> None:
        bound_port = port
        if "udp" in self.config.transports:
            udp, protocol = await self._loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            self._udp = udp
            self._udp_protocol = protocol
            bound_port = _norm_addr(udp.get_extra_info("sockname"))[1]
        if "tcp" in self.config.transports:
            self._tcp_server = await self._loop.create_server(
                lambda: _TcpConnection(self),
                host,
                bound_port,
                reuse_address=True,
            )
            sockets = self._tcp_server.sockets
            bound_port = _norm_addr(sockets[0].getsockname())[1]
        self._bound = (host, bound_port)

    async def stop(self) -> None:
        """Close listening sockets and every connection; cancel pending connects."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connecting.clear()
        await self._close_sockets()

    async def _close_sockets(self) -> None:
        # Transports close their sockets on the next loop iteration: wait for each
        # connection_lost, so that the port is free again when stop() returns.
        closing: list[asyncio.Future[None]] = []
        if self._udp is not None:
            self._udp.close()
            closing.append(self._udp_protocol.lost)
            self._udp = None
        server, self._tcp_server = self._tcp_server, None
        if server is not None:
            server.close()
        for conn in list(self._all_conns):
            conn.abort()
            closing.append(conn.lost)
        if server is not None:
            await server.wait_closed()
        if closing:
            await asyncio.wait(closing, timeout=_CLOSE_WAIT)
        self._conns.clear()

    # sending

    def send(self, data: bytes, addr: Addr, transport: str, token: object = None) -> None:
        """Send one message. Failures are reported to the sink (`send_failed`, with `token`),
        never raised: a TCP connect finishes later, and UDP errors are asynchronous anyway."""
        kind = transport.lower()
        if kind == "udp":
            self._send_udp(data, addr, token)
        elif kind == "tcp":
            self._send_tcp(data, addr, token)
        else:
            self._fail(
                data, addr, kind, OSError(errno.EPROTONOSUPPORT, f"no {transport} transport"), token
            )

    def _send_udp(self, data: bytes, addr: Addr, token: object) -> None:
        if self._udp is None or self._udp.is_closing():
            self._fail(data, addr, "udp", OSError(errno.ENOTCONN, "UDP transport not bound"), token)
            return
        if not is_ip_literal(addr[0]):
            # sendto() would resolve the name synchronously and block the loop.
            self._fail(
                data, addr, "udp", OSError(errno.EDESTADDRREQ, f"not an IP: {addr[0]}"), token
            )
            return
        self._udp.sendto(data, addr)
        self.stats.udp_datagrams_sent += 1
        self.stats.bytes_sent += len(data)

    def _send_tcp(self, data: bytes, addr: Addr, token: object) -> None:
        if self._tcp_server is None or self._stopping:
            self._fail(data, addr, "tcp", OSError(errno.ENOTCONN, "TCP transport not bound"), token)
            return
        conn = self._conns.get(addr)
        if conn is not None and conn.is_usable():
            # Connection reuse: requests and responses to a peer share its connection.
            conn.write(data)
            self.stats.tcp_messages_sent += 1
            return
        pending = self._connecting.get(addr)
        if pending is not None:
            if sum(len(d) for d, _ in pending) + len(data) > MAX_PENDING_CONNECT_BYTES:
                self._fail(data, addr, "tcp", OSError(errno.ENOBUFS, "connect queue full"), token)
            else:
                pending.append((data, token))
            return
        if not is_ip_literal(addr[0]):
            self._fail(
                data, addr, "tcp", OSError(errno.EDESTADDRREQ, f"not an IP: {addr[0]}"), token
            )
            return
        if len(self._all_conns) >= self.config.max_tcp_connections:
            self._fail(data, addr, "tcp", OSError(errno.EMFILE, "too many TCP connections"), token)
            return
        self._connecting[addr] = [(data, token)]
        task = self._loop.create_task(self._connect(addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, addr: Addr) -> None:
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _TcpConnection(self, key=addr), addr[0], addr[1]
                ),
                self.config.tcp_connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            self.stats.tcp_connect_failures += 1
            error = (
                exc
                if isinstance(exc, OSError)
                else OSError(errno.ETIMEDOUT, "TCP connect timed out")
            )
            log.info("TCP connect to %s:%d failed: %s", *addr, error)
            for data, token in self._connecting.pop(addr, []):
                self._fail(data, addr, "tcp", error, token)
            return
        # `_connection_made` flushed the queue, unless it refused the connection.
        refused = OSError(errno.ECONNABORTED, "connection refused locally")
        for data, token in self._connecting.pop(addr, []):
            self._fail(data, addr, "tcp", refused, token)

    def _fail(self, data: bytes, addr: Addr, transport: str, error: OSError, token: object) -> None:
        self.stats.send_failures += 1
        self._sink.send_failed(data, addr, transport, error, token)

    # callbacks from the protocols

    def _datagram_received(self, data: bytes, addr: Addr) -> None:
        self.stats.bytes_received += len(data)
        if not data.strip(b"\r\n\t \x00"):
            # Keep-alives some UAs send over UDP (CRLF, NUL bytes): nothing to answer.
            self.stats.udp_keepalives_received += 1
            return
        self.stats.udp_datagrams_received += 1
        self._sink.message_received(data, addr, "udp")

    def _connection_made(self, conn: _TcpConnection) -> None:
        if self._stopping or (
            not conn.outbound and len(self._all_conns) >= self.config.max_tcp_connections
        ):
            self.stats.tcp_connections_rejected += 1
            conn.abort()
            return
        if conn.outbound:
            self.stats.tcp_connections_opened += 1
        else:
            self.stats.tcp_connections_accepted += 1
        self._all_conns.add(conn)
        self._conns[conn.key] = conn
        conn.touch()
        conn.arm_idle(self.config.tcp_idle_timeout)
        for data, _ in self._connecting.pop(conn.key, []):
            conn.write(data)
            self.stats.tcp_messages_sent += 1

    def _connection_lost(self, conn: _TcpConnection) -> None:
        if conn not in self._all_conns:
            return
        self._all_conns.discard(conn)
        self.stats.tcp_connections_closed += 1
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]

    # introspection (tests, metrics)

    def connection_count(self) -> int:
        return len(self._all_conns)

    def has_connection(self, addr: Addr) -> bool:
        conn = self._conns.get(addr)
        return conn is not None and conn.is_usable()

    async def wait_closed(self, addr: Addr) -> None:
        """Return once the TCP connection filed under `addr` (if any) is closed."""
        conn = self._conns.get(addr)
        if conn is not None:
            await asyncio.shield(conn.lost)

    def stats_dict(self) -> dict[str, int]:
        out = self.stats.as_dict()
        out["tcp_connections_active"] = len(self._all_conns)
        return out
