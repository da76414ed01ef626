"""The HTTP/1.1 transport of the webhooks against real servers on 127.0.0.1.

Most servers here are raw ``asyncio.start_server`` handlers that write exactly the bytes a
test needs (keep-alive, closes, malformed or cut responses, chunked bodies, TLS with a
certificate made in the test); the real webhook receiver of ``tests/webhooks/receiver.py``
checks what arrives. Waits are on events and futures, bounded, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.webhooks.http11 import Http11Transport, RefusedConnectError
from app.webhooks.transport import build_http_client, refusal_of
from app.webhooks.urls import ForbiddenAddressError, IPAddress
from tests.webhooks.receiver import Receiver, Reply

# Bound of every wait in this file: for liveness only.
WAIT_S = 10.0
# A timeout that the code under test must hit (the server never answers).
SHORT_S = 0.05

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


# -- servers ---------------------------------------------------------------------------------


class RawServer:
    """``asyncio.start_server`` on 127.0.0.1 running ``handler(reader, writer, index)``.

    Counts the connections it accepted; ``ended[i]`` is set when the handler of connection
    ``i`` returned (for the keep-alive handler: when the client closed the connection).
    """

    def __init__(self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.ended: list[asyncio.Event] = []
        self.port = 0

    def url(self, path: str = "/hook", *, host: str = "127.0.0.1") -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT_S)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        index = self.connections
        self.connections += 1
        ended = asyncio.Event()
        self.ended.append(ended)
        try:
            await self._handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # stopped by __aexit__: ends quietly (asyncio logs a cancelled handler)
        finally:
            ended.set()
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request (head, body) off the connection; None at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
    if fields.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return head, body
    return head, await reader.readexactly(int(fields.get(b"content-length", b"0")))


def response(body: bytes = b"ok", *, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %b\r\nContent-Length: %d\r\n%b\r\n%b" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


def keep_alive(answer: bytes | None = None, heads: list[bytes] | None = None) -> Handler:
    """Answer every request with ``answer`` (default 200 "ok") until the client closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        while (request := await read_request(reader)) is not None:
            if heads is not None:
                heads.append(request[0] + request[1])
            writer.write(answer if answer is not None else response())
            await writer.drain()

    return handler


def client(transport: httpx.AsyncBaseTransport, **timeouts: float) -> httpx.AsyncClient:
    timeout = httpx.Timeout(WAIT_S, **timeouts) if timeouts else httpx.Timeout(WAIT_S)
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


async def post(http: httpx.AsyncClient, url: str, body: bytes = b'{"n":1}') -> tuple[int, bytes]:
    async with http.stream("POST", url, content=body) as reply:
        data = b"".join([chunk async for chunk in reply.aiter_bytes()])
    return reply.status_code, data


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- keep-alive and the pool -----------------------------------------------------------------


async def test_sequential_requests_share_one_connection() -> None:
    heads: list[bytes] = []
    async with RawServer(keep_alive(heads=heads)) as server:
        async with client(Http11Transport()) as http:
            for n in range(20):
                assert await post(http, server.url(), b'{"n":%d}' % n) == (200, b"ok")
        assert server.connections == 1
        assert len(heads) == 20
        # Request line, Host, Content-Length and the body, as httpx made them.
        first = heads[0]
        assert first.startswith(b"POST /hook HTTP/1.1\r\n")
        assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in first
        assert b"\r\nContent-Length: 7\r\n" in first
        assert first.endswith(b'\r\n\r\n{"n":0}')
        # Closing the client closes the connection.
        await asyncio.wait_for(server.ended[0].wait(), WAIT_S)


async def test_the_real_receiver_gets_every_request_intact() -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        receiver.plan = lambda request: Reply(status=201, body=b'{"action":"accept"}')
        http = build_http_client(
            timeout=WAIT_S, max_connections=4, allow_private=True, user_agent="callctl-test"
        )
        async with http:
            for n in range(5):
                async with http.stream(
                    "POST",
                    receiver.url(),
                    content=b'{"n":%d}' % n,
                    headers={"content-type": "application/json", "webhook-id": f"msg_{n}"},
                ) as reply:
                    body = b"".join([chunk async for chunk in reply.aiter_bytes()])
                assert reply.status_code == 201
                assert body == b'{"action":"accept"}'
                assert dict(reply.headers)["content-type"] == "text/plain"
                assert reply.http_version == "HTTP/1.1"
        assert [r.body for r in receiver.requests] == [b'{"n":%d}' % n for n in range(5)]
        assert {r.headers["user-agent"] for r in receiver.requests} == {"callctl-test"}
        assert receiver.requests[3].headers["webhook-id"] == "msg_3"
        assert receiver.requests[3].headers["content-type"] == "application/json"
    finally:
        await receiver.stop()


async def test_the_pool_never_opens_more_than_max_connections() -> None:
    release = asyncio.Event()
    arrived: list[int] = []
    two_waiting = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        while await read_request(reader) is not None:
            arrived.append(1)
            if len(arrived) == 2:
                two_waiting.set()
            await release.wait()
            writer.write(response())
            await writer.drain()

    async with RawServer(held) as server:
        transport = Http11Transport(max_connections=2)
        async with client(transport) as http:
            sends = [asyncio.create_task(post(http, server.url())) for _ in range(6)]
            await asyncio.wait_for(two_waiting.wait(), WAIT_S)
            assert server.connections == 2
            assert transport.pool.open_connections == 2
            release.set()
            assert await asyncio.gather(*sends) == [(200, b"ok")] * 6
        assert server.connections == 2
        assert len(arrived) == 6


async def test_a_full_pool_times_out_with_pool_timeout() -> None:
    arrived = asyncio.Event()

    async def hung(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        await read_request(reader)
        arrived.set()
        await reader.read()

    async with RawServer(hung) as server:
        async with client(Http11Transport(max_connections=1), pool=SHORT_S) as http:
            first = asyncio.create_task(post(http, server.url()))
            await asyncio.wait_for(arrived.wait(), WAIT_S)  # it holds the only connection
            with pytest.raises(httpx.PoolTimeout):
                await post(http, server.url())
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
        assert server.connections == 1


async def test_an_idle_connection_of_another_origin_makes_room() -> None:
    async with RawServer(keep_alive()) as one, RawServer(keep_alive()) as two:
        transport = Http11Transport(max_connections=1)
        async with client(transport) as http:
            assert await post(http, one.url()) == (200, b"ok")
            assert await post(http, two.url()) == (200, b"ok")
            # The idle connection to the first server was closed for the second one.
            await asyncio.wait_for(one.ended[0].wait(), WAIT_S)
            assert transport.pool.open_connections == 1
            assert await post(http, one.url()) == (200, b"ok")
        assert (one.connections, two.connections) == (2, 1)


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    close_now = asyncio.Event()

    async def closes_when_told(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        while await read_request(reader) is not None:
            writer.write(response())
            await writer.drain()
            if index == 0:
                await close_now.wait()
                return  # RawServer closes the connection

    async with RawServer(closes_when_told) as server:
        transport = Http11Transport()
        async with client(transport) as http:
            assert await post(http, server.url()) == (200, b"ok")
            (idle,) = transport.pool.idle_connections()
            close_now.set()
            # Noticed by the protocol (connection_lost), not by a check before reuse.
            await asyncio.wait_for(idle.wait_closed(), WAIT_S)
            assert transport.pool.idle_connections() == []
            assert transport.pool.open_connections == 0
            assert await post(http, server.url()) == (200, b"ok")
        assert server.connections == 2


async def test_idle_connections_expire() -> None:
    async with RawServer(keep_alive()) as server:
        transport = Http11Transport(keepalive_expiry=SHORT_S)
        async with client(transport) as http:
            assert await post(http, server.url()) == (200, b"ok")
            (idle,) = transport.pool.idle_connections()
            await asyncio.wait_for(idle.wait_closed(), WAIT_S)
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)
            assert transport.pool.open_connections == 0
            assert await post(http, server.url()) == (200, b"ok")
        assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        response(extra=b"Connection: close\r\n"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_response_that_asks_to_close_is_not_reused(answer: bytes) -> None:
    # The server keeps its side open: the client must close by itself.
    async with RawServer(keep_alive(answer)) as server:
        transport = Http11Transport()
        async with client(transport) as http:
            assert await post(http, server.url()) == (200, b"ok")
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)
            assert transport.pool.idle_connections() == []
            assert await post(http, server.url()) == (200, b"ok")
        assert server.connections == 2


async def test_http_1_0_with_keep_alive_is_reused() -> None:
    answer = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(keep_alive(answer)) as server:
        async with client(Http11Transport()) as http:
            for _ in range(3):
                assert await post(http, server.url()) == (200, b"ok")
        assert server.connections == 1


async def test_a_request_with_connection_close_closes_its_connection() -> None:
    async with RawServer(keep_alive()) as server:
        async with client(Http11Transport()) as http:
            reply = await http.post(server.url(), content=b"x", headers={"connection": "close"})
            assert reply.status_code == 200
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)
            assert (await http.post(server.url(), content=b"x")).status_code == 200
        assert server.connections == 2


# -- bodies ------------------------------------------------------------------------------------


async def test_a_chunked_body_streams_as_it_arrives_and_keeps_the_connection() -> None:
    more = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await more.wait()
            writer.write(b"7\r\n second\r\n1;ext=1\r\n!\r\n0\r\nTrailer: x\r\n\r\n")
            await writer.drain()

    async with RawServer(chunked) as server:
        async with client(Http11Transport()) as http:
            async with http.stream("POST", server.url(), content=b"{}") as reply:
                pieces = reply.aiter_bytes()
                assert await anext(pieces) == b"first"  # before the rest was even sent
                more.set()
                rest = b"".join([chunk async for chunk in pieces])
            assert rest == b" second!"
            assert await post(http, server.url()) == (200, b"first second!")
        assert server.connections == 1


async def test_a_body_delimited_by_the_end_of_the_connection() -> None:
    async def until_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"it")
        await writer.drain()
        writer.close()  # a clean end: the body is complete

    async with RawServer(until_close) as server:
        transport = Http11Transport()
        async with client(transport) as http:
            assert await post(http, server.url()) == (200, b"all of it")
            assert transport.pool.idle_connections() == []
            assert await post(http, server.url()) == (200, b"all of it")
        assert server.connections == 2


async def test_an_unfinished_body_closed_early_closes_the_connection() -> None:
    async def long_body(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int
    ) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
            await writer.drain()  # the other 99990 bytes never come

    async with RawServer(long_body) as server:
        transport = Http11Transport()
        async with client(transport) as http:
            async with http.stream("POST", server.url(), content=b"{}") as reply:
                async for chunk in reply.aiter_bytes():
                    assert chunk == b"a" * 10
                    break
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)
            assert transport.pool.open_connections == 0
            async with http.stream("POST", server.url(), content=b"{}") as reply:
                assert reply.status_code == 200
        assert server.connections == 2


async def test_a_fully_received_body_left_unread_does_not_stop_reuse() -> None:
    async with RawServer(keep_alive(response(b"x" * 100))) as server:
        async with client(Http11Transport()) as http:
            for _ in range(3):
                # Head and body come in one segment: the body is all here, and unread.
                async with http.stream("POST", server.url(), content=b"{}") as reply:
                    assert reply.status_code == 200
        assert server.connections == 1


async def test_a_large_body_arrives_whole_past_the_read_pause() -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB: reading pauses and resumes on the way
    async with RawServer(keep_alive(response(blob))) as server:
        async with client(Http11Transport()) as http:
            for _ in range(2):
                status, data = await post(http, server.url())
                assert status == 200
                assert hashlib.sha256(data).digest() == hashlib.sha256(blob).digest()
        assert server.connections == 1


async def test_interim_responses_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + response(b"done")
    async with RawServer(keep_alive(answer)) as server:
        async with client(Http11Transport()) as http:
            assert await post(http, server.url()) == (200, b"done")
            assert await post(http, server.url()) == (200, b"done")
        assert server.connections == 1


async def test_a_streamed_request_body_goes_chunked() -> None:
    heads: list[bytes] = []

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    async with RawServer(keep_alive(heads=heads)) as server:
        async with client(Http11Transport()) as http:
            reply = await http.post(server.url(), content=parts())
            assert reply.status_code == 200
            assert (await http.post(server.url(), content=b"after")).status_code == 200
        assert b"\r\nTransfer-Encoding: chunked\r\n" in heads[0]
        assert heads[0].endswith(b'\r\n\r\n{"a":1}')  # as read_request decoded it
        assert heads[1].endswith(b"\r\n\r\nafter")
        assert server.connections == 1


async def test_header_injection_is_refused_before_sending() -> None:
    async with RawServer(keep_alive()) as server:
        async with client(Http11Transport()) as http:
            with pytest.raises(httpx.LocalProtocolError):
                await http.post(server.url(), content=b"x", headers={"x": "a\r\nEvil: 1"})
        assert server.connections == 0


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 OK\r\n\r\n",
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["no-status-code", "not-http", "two-lengths", "bad-chunk-size"],
)
async def test_a_malformed_response_is_a_remote_protocol_error(answer: bytes) -> None:
    async with RawServer(keep_alive(answer)) as server:
        transport = Http11Transport()
        async with client(transport) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await post(http, server.url())
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)
            assert transport.pool.open_connections == 0


async def test_a_head_too_large_is_refused() -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 70000 + b"\r\n\r\n"
    async with RawServer(keep_alive(answer)) as server:
        async with client(Http11Transport()) as http:
            with pytest.raises(httpx.RemoteProtocolError, match="too large"):
                await post(http, server.url())


@pytest.mark.parametrize(
    ("sent", "match"),
    [
        (b"", "without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "before the end"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", "before the end"),
    ],
    ids=["nothing", "half-a-head", "mid-length", "mid-chunked"],
)
async def test_a_server_closing_mid_response_is_an_error(sent: bytes, match: str) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        await read_request(reader)
        writer.write(sent)
        await writer.drain()
        writer.close()

    async with RawServer(cut) as server:
        transport = Http11Transport()
        async with client(transport) as http:
            with pytest.raises(httpx.RemoteProtocolError, match=match):
                await post(http, server.url())
            assert transport.pool.open_connections == 0


async def test_a_silent_server_is_a_read_timeout_and_the_connection_is_dropped() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up and closes

    async with RawServer(silent) as server:
        transport = Http11Transport()
        async with client(transport, read=SHORT_S) as http:
            with pytest.raises(httpx.ReadTimeout):
                await post(http, server.url())
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)
            assert transport.pool.open_connections == 0


async def test_a_body_that_stalls_is_a_read_timeout() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async with RawServer(stalls) as server:
        async with client(Http11Transport(), read=SHORT_S) as http:
            with pytest.raises(httpx.ReadTimeout):
                await post(http, server.url())
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)


async def test_a_cancelled_request_frees_its_connection() -> None:
    arrived = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        await read_request(reader)
        arrived.set()
        await reader.read()

    async with RawServer(silent) as server:
        transport = Http11Transport(max_connections=1)
        async with client(transport) as http:
            task = asyncio.create_task(post(http, server.url()))
            await asyncio.wait_for(arrived.wait(), WAIT_S)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert transport.pool.open_connections == 0
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)


async def test_a_refused_connect_is_a_connect_error() -> None:
    async with client(Http11Transport()) as http:
        with pytest.raises(httpx.ConnectError):
            await post(http, f"http://127.0.0.1:{free_port()}/hook")


# -- the SSRF guard ----------------------------------------------------------------------------


class Resolving:
    """A resolver answering from a table, recording the names it was asked."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        return [ipaddress.ip_address(self.table[host])]


def permit_all(host: str, addresses: Iterable[IPAddress]) -> list[IPAddress]:
    """Stands in for the check of a public address, so loopback can play one."""
    return list(addresses)


async def test_a_name_resolving_to_a_private_address_is_refused_before_connecting() -> None:
    async with RawServer(keep_alive()) as server:
        http = build_http_client(
            timeout=WAIT_S,
            max_connections=4,
            allow_private=False,
            resolver=Resolving({"hooks.example.test": "10.1.2.3", "127.0.0.1": "127.0.0.1"}),
        )
        async with http:
            with pytest.raises(httpx.ConnectError) as caught:
                await post(http, server.url(host="hooks.example.test"))
            reason = refusal_of(caught.value)
            assert isinstance(reason, ForbiddenAddressError)
            assert "hooks.example.test resolves to 10.1.2.3 is a private address" in str(reason)
            assert isinstance(caught.value, RefusedConnectError)
            # An address literal is checked the same way.
            with pytest.raises(httpx.ConnectError) as caught:
                await post(http, server.url())
            assert "loopback" in str(refusal_of(caught.value))
        assert server.connections == 0


async def test_the_guard_connects_to_the_address_it_checked_and_sends_the_name() -> None:
    heads: list[bytes] = []
    async with RawServer(keep_alive(heads=heads)) as server:
        # ".test" never resolves for real: only the checked address can be reached.
        resolver = Resolving({"hooks.example.test": "127.0.0.1"})
        transport = Http11Transport(guard=True, resolver=resolver, check=permit_all)
        async with client(transport) as http:
            for _ in range(2):
                assert await post(http, server.url(host="hooks.example.test")) == (200, b"ok")
        assert b"\r\nHost: hooks.example.test:%d\r\n" % server.port in heads[0]
        assert resolver.calls == ["hooks.example.test"]
        assert server.connections == 1


async def test_trusted_hosts_skip_the_check_and_allow_private_skips_the_guard() -> None:
    async def never(host: str, port: int) -> list[IPAddress]:
        raise AssertionError("no lookup expected")

    async with RawServer(keep_alive()) as server:
        trusted = build_http_client(
            timeout=WAIT_S,
            max_connections=2,
            allow_private=False,
            trusted_hosts=["127.0.0.1"],
            resolver=never,
        )
        async with trusted:
            assert await post(trusted, server.url()) == (200, b"ok")
        private = build_http_client(
            timeout=WAIT_S, max_connections=2, allow_private=True, resolver=never
        )
        async with private:
            assert await post(private, server.url()) == (200, b"ok")
        assert server.connections == 2


async def test_a_resolver_that_hangs_is_a_connect_timeout() -> None:
    async def hangs(host: str, port: int) -> list[IPAddress]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    transport = Http11Transport(guard=True, resolver=hangs)
    async with client(transport, connect=SHORT_S) as http:
        with pytest.raises(httpx.ConnectTimeout):
            await post(http, "http://hooks.example.test/hook")
        assert transport.pool.open_connections == 0


async def test_the_client_does_not_follow_redirects() -> None:
    moved = response(b"", status="302 Found", extra=b"Location: http://10.0.0.1/admin\r\n")
    async with RawServer(keep_alive(moved)) as server:
        http = build_http_client(
            timeout=WAIT_S, max_connections=2, allow_private=False, trusted_hosts=["127.0.0.1"]
        )
        async with http:
            assert await post(http, server.url()) == (302, b"")
        assert server.connections == 1


# -- TLS ---------------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for hooks.example.test and 127.0.0.1."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callctl test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("hooks.example.test"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / name for name in ("ca.pem", "cert.pem", "key"))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _certificates(tmp_path_factory.mktemp("tls"))


def _server_context(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    _ca, cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_https_with_a_trusted_ca(tls_files: tuple[Path, Path, Path]) -> None:
    ca, _cert, _key = tls_files
    trusting = ssl.create_default_context(cafile=str(ca))
    async with RawServer(keep_alive(), ssl_context=_server_context(tls_files)) as server:
        async with client(Http11Transport(ssl_context=trusting)) as http:
            for _ in range(3):
                assert await post(http, server.url()) == (200, b"ok")
        # Through the guard: connected to the checked address, verified against the name.
        guarded = Http11Transport(
            ssl_context=trusting,
            guard=True,
            resolver=Resolving({"hooks.example.test": "127.0.0.1"}),
            check=permit_all,
        )
        async with client(guarded) as http:
            assert await post(http, server.url(host="hooks.example.test")) == (200, b"ok")
        assert server.connections == 2


async def test_https_refuses_an_untrusted_or_mismatched_certificate(
    tls_files: tuple[Path, Path, Path],
) -> None:
    ca, _cert, _key = tls_files
    async with RawServer(keep_alive(), ssl_context=_server_context(tls_files)) as server:
        # The default context (httpx's CA bundle) does not know the test CA.
        async with client(Http11Transport()) as http:
            with pytest.raises(httpx.ConnectError) as caught:
                await post(http, server.url())
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        assert refusal_of(caught.value) is None
        # A trusted CA, but the certificate is not for the name in the URL.
        mismatched = Http11Transport(
            ssl_context=ssl.create_default_context(cafile=str(ca)),
            guard=True,
            resolver=Resolving({"other.example.test": "127.0.0.1"}),
            check=permit_all,
        )
        async with client(mismatched) as http:
            with pytest.raises(httpx.ConnectError) as caught:
                await post(http, server.url(host="other.example.test"))
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        assert "other.example.test" in str(caught.value)


# -- post(): the dispatcher's path without httpx request and response objects ---------------

TIMEOUTS: dict[str, float | None] = {
    "connect": WAIT_S,
    "read": WAIT_S,
    "write": WAIT_S,
    "pool": WAIT_S,
}


async def test_post_writes_the_same_head_and_reuses_the_connection() -> None:
    heads: list[bytes] = []
    async with RawServer(keep_alive(heads=heads)) as server:
        transport = Http11Transport()
        try:
            for n in range(3):
                raw = await transport.post(
                    server.url("/hook?a=1"),
                    b'{"n":%d}' % n,
                    {"Content-Type": "application/json", "webhook-id": f"msg_{n}"},
                    timeouts=TIMEOUTS,
                    limit=1024,
                )
                assert (raw.status_code, raw.body) == (200, b"ok")
                assert raw.headers == {"content-length": "2"}
        finally:
            await transport.aclose()
        assert server.connections == 1
        first = heads[0]
        assert first.startswith(b"POST /hook?a=1 HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n" % server.port)
        assert b"\r\ncontent-length: 7\r\n" in first
        assert b"\r\ncontent-type: application/json\r\nwebhook-id: msg_0\r\n" in first
        assert heads[2].endswith(b'\r\n\r\n{"n":2}')


async def test_post_keeps_at_most_limit_bytes_and_drops_a_connection_cut_short() -> None:
    big = b"x" * 5000
    async with RawServer(keep_alive(response(big, extra=b"Set: a\r\nset: b\r\n"))) as server:
        transport = Http11Transport()
        try:
            raw = await transport.post(server.url(), b"{}", {}, timeouts=TIMEOUTS, limit=10)
            assert raw.body == b"x" * 10
            # Repeated fields are joined, as httpx shows them.
            assert raw.headers["set"] == "a, b"
            raw = await transport.post(server.url(), b"{}", {}, timeouts=TIMEOUTS, limit=10_000)
            assert raw.body == big
        finally:
            await transport.aclose()


async def test_post_refuses_header_injection_and_bad_urls_before_connecting() -> None:
    async with RawServer(keep_alive()) as server:
        transport = Http11Transport()
        try:
            with pytest.raises(httpx.LocalProtocolError):
                await transport.post(
                    server.url(), b"x", {"x": "a\r\nEvil: 1"}, timeouts=TIMEOUTS, limit=10
                )
            with pytest.raises(httpx.UnsupportedProtocol):
                await transport.post(
                    f"ftp://127.0.0.1:{server.port}/", b"x", {}, timeouts=TIMEOUTS, limit=10
                )
        finally:
            await transport.aclose()
        assert server.connections == 0


async def test_post_read_timeout_closes_the_connection() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes

    async with RawServer(silent) as server:
        transport = Http11Transport()
        try:
            with pytest.raises(httpx.ReadTimeout):
                await transport.post(
                    server.url(), b"x", {}, timeouts={**TIMEOUTS, "read": SHORT_S}, limit=10
                )
            await asyncio.wait_for(server.ended[0].wait(), WAIT_S)
            assert transport.pool.open_connections == 0
        finally:
            await transport.aclose()
