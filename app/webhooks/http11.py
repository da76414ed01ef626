"""A lean HTTP/1.1 transport under httpx: keep-alive pool on asyncio protocols, httptools.

Why: httpx's default transport (httpcore over anyio streams, h11, a socket-readability
poll before every reuse) cost about 1 ms of CPU per webhook, a quarter of the service's
CPU under load. The dispatcher keeps httpx as its client API; this transport does the
wire work with what the event loop already offers: ``loop.create_connection`` with an
:class:`asyncio.Protocol`, the C parser of ``httptools`` (llhttp), one ``write`` per
request, and futures woken by the protocol callbacks.

What it does (RFC 9112):

* HTTP/1.1 only. A pool of keep-alive connections per origin (scheme, host, port), at
  most ``max_connections`` open at once over all origins (waiting requests queue for a
  slot; an idle connection of another origin is closed to make room). Idle connections
  expire after ``keepalive_expiry`` seconds; one that the server closes while idle is
  dropped in ``connection_lost``, with no polling.
* A connection is reused only if its response was complete on the wire when the
  response was closed, and neither side asked to close (``Connection: close``,
  HTTP/1.0 without keep-alive, a body delimited by the end of the connection: §9.3,
  §6.3). Unread but fully received body bytes do not stop reuse; bytes still on the way
  do, the connection is closed.
* Content-Length, chunked and read-until-close bodies (§6.3); informational (1xx)
  responses are skipped.
* No request is sent twice: one that fails is the caller's to retry (a webhook attempt
  that reached the receiver is logged as such). A connection the server closes just as
  it is reused fails that request, as with any client (RFC 9112 §9.3.1 on retries).
* Timeouts from ``request.extensions["timeout"]`` (connect, read, write, pool), errors
  as httpx exceptions, so callers handle them as with httpx's own transport.
* The SSRF guard (``guard=True``): the host is resolved with ``resolver``, every address
  checked with ``check`` (``app.webhooks.urls.check_resolved``), and the connection goes
  to a checked address, so that a second lookup cannot swap in another (DNS rebinding).
  A refusal raises :class:`RefusedConnectError`. TLS checks the certificate against the
  URL's host name whatever address was connected. ``trusted_hosts`` (the operator's
  default URL) skip the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import suppress
from typing import Any, NamedTuple, cast

import httptools
import httpx

from app.webhooks.urls import (
    ForbiddenAddressError,
    IPAddress,
    check_resolved,
    parse_host_literal,
)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
AddressCheck = Callable[[str, Iterable[IPAddress]], list[IPAddress]]
# (scheme, host, port): connections are shared by requests to the same origin only.
Origin = tuple[bytes, str, int]

# A response head larger than this is refused (llhttp itself sets no bound).
MAX_HEAD_BYTES = 64 * 1024
# Reading pauses while this much of a body waits for a slow consumer, resumes below LOW.
_READ_HIGH_WATER = 256 * 1024
_READ_LOW_WATER = 64 * 1024
# How long closing the transport waits for its sockets to close (TLS sends close_notify).
_CLOSE_WAIT_S = 1.0
# Statuses whose responses never have a body (RFC 9112 §6.3 item 1).
_NO_BODY_STATUSES = frozenset({204, 304})
# How many parsed URLs post() keeps (a cache: cleared whole when full).
_MAX_TARGETS = 1024
_CRLF = re.compile("[\r\n]")
_CRLF_BYTES = re.compile(b"[\r\n]")


class RawResponse(NamedTuple):
    """A response read by :meth:`Http11Transport.post`: lowercased header names."""

    status_code: int
    headers: dict[str, str]
    body: bytes


class RefusedConnectError(httpx.ConnectError):
    """Raised instead of connecting to a forbidden address (the SSRF guard).

    An ``httpx.ConnectError``, so callers that do not look closer treat it as a failed
    connect; ``reason`` (also the ``__cause__``) says which address and why.
    """

    def __init__(self, reason: ForbiddenAddressError) -> None:
        super().__init__(str(reason))
        self.reason = reason


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses of ``host`` from the system resolver (getaddrinfo), in its order."""
    literal = parse_host_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _expire(waiter: asyncio.Future[None], error: type[httpx.TimeoutException]) -> None:
    if not waiter.done():
        waiter.set_exception(error("timed out"))


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: the protocol callbacks fill the exchange under way.

    At most one exchange at a time (no pipelining). The request's task waits on
    ``_waiter``, which every callback that changes the exchange's state wakes.
    """

    def __init__(self, pool: _Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False  # lost, or closed by us: never used again
        self.counted = False  # holds one of the pool's slots
        self.idle_since = 0.0
        self._gone = False  # connection_lost has run
        self._lost: asyncio.Future[None] | None = None  # for wait_closed()
        self._waiter: asyncio.Future[None] | None = None
        self._writable = True
        self._reading_paused = False
        # The exchange under way (reset by begin()).
        self.active = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: httpx.TransportError | None = None
        self.status = 0
        self.version = "1.1"
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.received = 0
        self._buffered = 0
        self._head_size = 0
        self._informational = False
        self._head_request = False
        self._reuse_allowed = True

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active:
            # Bytes while idle (an early 408, garbage): the connection is unusable.
            self.close()
            return
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("unexpected protocol upgrade"))
            return
        except httptools.HttpParserError as exc:
            if self._head_size > MAX_HEAD_BYTES:
                self._fail(httpx.RemoteProtocolError("response head too large"))
            else:
                self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            return
        if not self.head_done and self.received > MAX_HEAD_BYTES:
            # Still no end of the head (llhttp buffers a field until it ends).
            self._fail(httpx.RemoteProtocolError("response head too large"))

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self._gone = True
        self.keep_alive = False
        if self.active and not self.complete and self.error is None:
            if self.head_done and exc is None and self._ends_at_close():
                self.complete = True
            elif exc is not None:
                self.error = httpx.ReadError(str(exc) or type(exc).__name__)
            elif self.head_done:
                self.error = httpx.RemoteProtocolError(
                    "server closed the connection before the end of the response body"
                )
            else:
                self.error = httpx.RemoteProtocolError(
                    "server disconnected without sending a response"
                )
        self._wake()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self.keep_alive = False  # a second response nobody asked for

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        if self._head_size > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("response head too large")  # stops the parser
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx: an interim response, the final one follows (RFC 9110 §15.2).
            self._informational = True
            self.headers = []
            self.reason = b""
            return
        self.status = status
        self.version = self._parser.get_http_version()
        self.head_done = True
        if self._head_request:
            # No body follows, but llhttp cannot be told so: end here, never reuse.
            self.complete = True
            self._reuse_allowed = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_HIGH_WATER and not self._reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.complete:
            return
        self.complete = True
        self.keep_alive = self._reuse_allowed and self._parser.should_keep_alive()
        self._wake()

    # -- used by the transport -------------------------------------------------------------

    def begin(self, data: bytes, *, head: bool, reuse: bool) -> None:
        """Start an exchange: reset its state and write the whole request at once."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise httpx.WriteError("connection closed")
        self.active = True
        self.head_done = self.complete = self.keep_alive = False
        self.error = None
        self.status = self.received = self._buffered = self._head_size = 0
        self.reason = b""
        self.headers = []
        self.chunks.clear()
        self._informational = False
        self._head_request = head
        self._reuse_allowed = reuse
        transport.write(data)

    async def drain(self, timeout: float | None) -> None:  # noqa: ASYNC109 - httpx's timeouts
        """Wait while the kernel and transport buffers are full (large bodies only)."""
        while not self._writable and not self.closed:
            await self._wait(timeout, httpx.WriteTimeout)

    async def wait_head(self, timeout: float | None) -> None:  # noqa: ASYNC109
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait(timeout, httpx.ReadTimeout)

    async def next_chunk(self, timeout: float | None) -> bytes:  # noqa: ASYNC109
        """The next piece of the body; b"" at its end."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < _READ_LOW_WATER:
                    self._reading_paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                return chunk
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(timeout, httpx.ReadTimeout)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    async def wait_closed(self) -> None:
        """Until ``connection_lost`` has run (the socket is closed)."""
        if self._gone:
            return
        if self._lost is None:
            self._lost = self.pool.loop.create_future()
        await self._lost

    def close(self) -> None:
        """Close at once (no more use), and give the pool slot back."""
        self.closed = True
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()
        self.pool.forget(self)

    # -- internals ---------------------------------------------------------------------------

    async def _wait(
        self,
        timeout: float | None,  # noqa: ASYNC109 - one timer per wait, cheaper than a scope
        error: type[httpx.TimeoutException],
    ) -> None:
        """Until a callback wakes us; ``error`` is raised if ``timeout`` passes first."""
        loop = self.pool.loop
        waiter = loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter, error)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if not self.complete and self.error is None:
            self.error = error
        self._wake()
        self.close()

    def _ends_at_close(self) -> bool:
        """Whether this response's body is delimited by the end of the connection.

        RFC 9112 §6.3 item 8: no Transfer-Encoding and no Content-Length (and a status
        that may have a body). Asked only when the connection ended mid-response.
        """
        if self.status in _NO_BODY_STATUSES:
            return False
        for name, _value in self.headers:
            if name.lower() in (b"content-length", b"transfer-encoding"):
                return False
        return True


class _Pool:
    """Keep-alive connections per origin, at most ``max_connections`` open in all."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float,
        connect: Callable[[_Pool, Origin, float | None], Awaitable[_Connection]],
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._connect = connect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._count = 0  # open or opening connections
        # Idle connections per origin, least recently used first (reuse takes the last).
        self._idle: dict[Origin, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def open_connections(self) -> int:
        return self._count

    def idle_connections(self, origin: Origin | None = None) -> list[_Connection]:
        if origin is not None:
            return list(self._idle.get(origin, ()))
        return [conn for conns in self._idle.values() for conn in conns]

    async def acquire(
        self,
        origin: Origin,
        connect_timeout: float | None,
        pool_timeout: float | None,
    ) -> _Connection:
        loop = self.loop
        while True:
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()
                if not idle:
                    del self._idle[origin]
                if loop.time() - conn.idle_since > self._expiry:
                    conn.close()
                    idle = self._idle.get(origin)
                    continue
                return conn
            if self._count < self._max:
                self._count += 1
                try:
                    conn = await self._connect(self, origin, connect_timeout)
                except BaseException:
                    self._count -= 1
                    self._wake_one()
                    raise
                if conn.closed:  # lost before we got to it
                    self._count -= 1
                    self._wake_one()
                    raise httpx.ConnectError("connection closed as soon as it was opened")
                conn.counted = True
                self._all.add(conn)
                if self._closed:
                    conn.close()
                    raise httpx.ConnectError("the transport is closed")
                return conn
            if self._evict_idle():
                continue
            await self._wait_for_slot(pool_timeout)

    def release(self, conn: _Connection) -> None:
        """The exchange is over: back to the idle list if the connection may be reused."""
        conn.active = False
        if not conn.reusable or self._closed:
            conn.close()
            return
        conn.chunks.clear()
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._expiry, self._sweep_idle)
        self._wake_one()

    def forget(self, conn: _Connection) -> None:
        """The connection is closed: drop it from the idle list, free its slot."""
        if not conn.counted:
            return
        conn.counted = False
        self._count -= 1
        self._all.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.origin]
        self._wake_one()

    async def aclose(self) -> None:
        """Close every connection; wait (bounded) until their sockets are closed."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        connections = list(self._all)
        for conn in connections:
            conn.close()
        self._idle.clear()
        if connections:
            closing = [asyncio.ensure_future(conn.wait_closed()) for conn in connections]
            _done, pending = await asyncio.wait(closing, timeout=_CLOSE_WAIT_S)
            for task in pending:
                task.cancel()

    def _evict_idle(self) -> bool:
        """Close the least recently used idle connection (of another origin); False if none."""
        oldest: _Connection | None = None
        for conns in self._idle.values():
            if oldest is None or conns[0].idle_since < oldest.idle_since:
                oldest = conns[0]
        if oldest is None:
            return False
        oldest.close()
        return True

    async def _wait_for_slot(self, timeout: float | None) -> None:  # noqa: ASYNC109
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, but leaving: the wake-up goes to the next one
            else:
                waiter.cancel()
                with suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("timed out waiting for a connection") from None
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep_idle(self) -> None:
        """Close idle connections past their expiry; come back for the others."""
        self._sweep = None
        now = self.loop.time()
        earliest: float | None = None
        for conns in list(self._idle.values()):
            while conns and now - conns[0].idle_since >= self._expiry:
                conns[0].close()  # forget() removes it from the list
            if conns and (earliest is None or conns[0].idle_since < earliest):
                earliest = conns[0].idle_since
        if earliest is not None:
            self._sweep = self.loop.call_later(
                max(earliest + self._expiry - now, 0.0), self._sweep_idle
            )


class _ResponseStream(httpx.AsyncByteStream):
    """The body as it arrives; closing it gives the connection back (or closes it)."""

    def __init__(self, conn: _Connection, timeout: float | None) -> None:
        self._conn: _Connection | None = conn
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        while chunk := await conn.next_chunk(self._timeout):
            yield chunk

    async def aclose(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.pool.release(conn)


class Http11Transport(httpx.AsyncBaseTransport):
    """httpx transport: HTTP/1.1 keep-alive pool on asyncio protocols (see the module).

    ``max_connections``: open connections over all origins. ``keepalive_expiry``: seconds
    an idle connection is kept. ``ssl_context``: for https (default: httpx's, certifi's
    CAs). ``guard``: resolve and check every address before connecting (SSRF), with
    ``resolver`` and ``check``; hosts in ``trusted_hosts`` skip the check.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        guard: bool = False,
        resolver: Resolver = system_resolver,
        check: AddressCheck = check_resolved,
        trusted_hosts: Collection[str] = (),
    ) -> None:
        self._ssl_context = ssl_context
        self._guard = guard
        self._resolver = resolver
        self._check = check
        self._trusted = frozenset(host.lower() for host in trusted_hosts)
        # URL -> (origin, start of a POST's head): webhook URLs repeat (see post()).
        self._targets: dict[str, tuple[Origin, bytes]] = {}
        self._pool = _Pool(
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            connect=self._open,
        )

    @property
    def pool(self) -> _Pool:
        """The connection pool (for tests and metrics)."""
        return self._pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme == b"http":
            default_port = 80
        elif scheme == b"https":
            default_port = 443
        else:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        host = url.raw_host.decode("ascii")
        if not host:
            raise httpx.UnsupportedProtocol("the URL has no host")
        origin: Origin = (scheme, host, url.port or default_port)
        method = request.method.encode("ascii")
        data, reuse = await self._serialize(request, method)
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        conn = await self._pool.acquire(origin, timeouts.get("connect"), timeouts.get("pool"))
        try:
            conn.begin(data, head=method == b"HEAD", reuse=reuse)
            await conn.drain(timeouts.get("write"))
            await conn.wait_head(read_timeout)
        except BaseException:
            conn.active = False
            conn.close()
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_ResponseStream(conn, read_timeout),
            extensions={
                "http_version": b"HTTP/1.0" if conn.version == "1.0" else b"HTTP/1.1",
                "reason_phrase": conn.reason,
            },
        )

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeouts: Mapping[str, float | None],
        limit: int,
    ) -> RawResponse:
        """POST ``body`` to ``url``; the response with at most ``limit`` bytes of its body.

        The webhook dispatcher's path: the same wire work as :meth:`handle_async_request`
        without building httpx request and response objects per call (a URL is parsed
        once, then kept). Header names are lowercased; Host and Content-Length are set
        here. Errors are the same httpx exceptions.
        """
        target = self._targets.get(url)
        if target is None:
            target = self._target_of(url)
        origin, head_start = target
        parts = [head_start, b"content-length: ", str(len(body)).encode("ascii"), b"\r\n"]
        reuse = True
        for name, value in headers.items():
            if _CRLF.search(name) or _CRLF.search(value):
                raise httpx.LocalProtocolError("CR or LF inside a header")
            name_bytes = name.lower().encode("ascii")
            value_bytes = value.encode("utf-8")
            if name_bytes == b"connection" and b"close" in value_bytes.lower():
                reuse = False
            parts += (name_bytes, b": ", value_bytes, b"\r\n")
        parts += (b"\r\n", body)
        read_timeout = timeouts.get("read")
        conn = await self._pool.acquire(origin, timeouts.get("connect"), timeouts.get("pool"))
        received = bytearray()
        try:
            conn.begin(b"".join(parts), head=False, reuse=reuse)
            await conn.drain(timeouts.get("write"))
            await conn.wait_head(read_timeout)
            status = conn.status
            response_headers: dict[str, str] = {}
            for raw_name, raw_value in conn.headers:
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                earlier = response_headers.get(name)
                # Repeated fields join with commas (RFC 9110 §5.3), as httpx shows them.
                response_headers[name] = value if earlier is None else f"{earlier}, {value}"
            while len(received) < limit:
                chunk = await conn.next_chunk(read_timeout)
                if not chunk:
                    break
                received += chunk
        except BaseException:
            conn.active = False
            conn.close()
            raise
        conn.pool.release(conn)
        return RawResponse(status, response_headers, bytes(received[:limit]))

    def _target_of(self, url: str) -> tuple[Origin, bytes]:
        """The origin and the start of a POST's head (request line, Host) for ``url``."""
        parsed = httpx.URL(url)
        scheme = parsed.raw_scheme
        if scheme == b"http":
            default_port = 80
        elif scheme == b"https":
            default_port = 443
        else:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {parsed.scheme!r}")
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise httpx.UnsupportedProtocol("the URL has no host")
        netloc = parsed.netloc
        path = parsed.raw_path
        if _CRLF_BYTES.search(netloc) or _CRLF_BYTES.search(path):
            raise httpx.LocalProtocolError("CR or LF inside the URL")
        origin: Origin = (scheme, host, parsed.port or default_port)
        head_start = b"POST %b HTTP/1.1\r\nhost: %b\r\n" % (path, netloc)
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()
        self._targets[url] = (origin, head_start)
        return origin, head_start

    async def aclose(self) -> None:
        await self._pool.aclose()

    # -- internals ---------------------------------------------------------------------------

    async def _serialize(self, request: httpx.Request, method: bytes) -> tuple[bytes, bool]:
        """The request as one buffer, and whether the connection may be kept after it.

        httpx has set Host and Content-Length (or Transfer-Encoding for a streamed body),
        and the client's default headers.
        """
        parts = [method, b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        reuse = True
        chunked = False
        raw = request.headers.raw
        for name, value in raw:
            parts += (name, b": ", value, b"\r\n")
            lower = name.lower()
            if lower == b"connection" and b"close" in value.lower():
                reuse = False
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        parts.append(b"\r\n")
        head = b"".join(parts)
        # No CR or LF inside the request line or a field (header injection): the head
        # holds exactly one CRLF per line.
        lines = len(raw) + 2
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise httpx.LocalProtocolError("CR or LF inside the request line or a header")
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        if chunked:
            # A streamed body, read whole: it goes as one chunk (RFC 9112 §7.1).
            if body:
                return b"%b%x\r\n%b\r\n0\r\n\r\n" % (head, len(body), body), reuse
            return head + b"0\r\n\r\n", reuse
        return head + body, reuse

    async def _open(
        self,
        pool: _Pool,
        origin: Origin,
        timeout: float | None,  # noqa: ASYNC109 - httpx's connect timeout
    ) -> _Connection:
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == b"https":
            if self._ssl_context is None:
                # Built on first use: loading the CA bundle takes a while.
                self._ssl_context = httpx.create_ssl_context(trust_env=False)
            context = self._ssl_context
        targets: list[str]
        if not self._guard or host.lower() in self._trusted:
            targets = [host]
        else:
            try:
                async with asyncio.timeout(timeout):
                    resolved = await self._resolver(host, port)
            except TimeoutError:
                raise httpx.ConnectTimeout(f"resolving {host} timed out") from None
            try:
                addresses = self._check(host, resolved)
            except ForbiddenAddressError as exc:
                raise RefusedConnectError(exc) from exc
            targets = [str(address) for address in addresses]
        last_error: httpx.TransportError | None = None
        for target in targets:
            try:
                return await self._connect_one(pool, origin, target, context, timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # check() returns at least one address
        raise last_error

    async def _connect_one(
        self,
        pool: _Pool,
        origin: Origin,
        target: str,
        context: ssl.SSLContext | None,
        timeout: float | None,  # noqa: ASYNC109
    ) -> _Connection:
        _scheme, host, port = origin
        try:
            async with asyncio.timeout(timeout):
                _transport, conn = await pool.loop.create_connection(
                    lambda: _Connection(pool, origin),
                    target,
                    port,
                    ssl=context,
                    # The certificate is checked against the URL's name, not the address.
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:  # refused, unreachable, TLS handshake or verification
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn
