"""Tiny raw-socket peers on loopback for the asyncio glue tests.

Every wait is `asyncio.wait_for` on a future or a queue with a timeout (WAIT): no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import cast

from app.sip.aio.transport import Addr

#: Upper bound for any single wait in these tests (a failure, not a timing assertion).
WAIT = 5.0


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 that queues what it receives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Addr]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> UdpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (the selector loop's UDP transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))

    @property
    def addr(self) -> Addr:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def send(self, data: bytes, addr: Addr) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def recv(self) -> tuple[bytes, Addr]:
        return await asyncio.wait_for(self.queue.get(), WAIT)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpPeer:
    """A raw TCP client connected to the server under test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, addr: Addr) -> TcpPeer:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), WAIT)
        return cls(reader, writer)

    @property
    def addr(self) -> Addr:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WAIT)

    async def read_exactly(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), WAIT)

    async def read_message(self) -> bytes:
        """One SIP message: header block, then Content-Length bytes of body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                length = int(value.strip())
        body = await self.read_exactly(length) if length else b""
        return head + body

    async def read_eof(self) -> bytes:
        """Everything until the server closes the connection."""
        return await asyncio.wait_for(self.reader.read(), WAIT)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)


@dataclass
class TcpListener:
    """A raw TCP server: counts accepted connections and queues what each receives."""

    server: asyncio.Server | None = None
    accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    accepted_event: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls) -> TcpListener:
        listener = cls()

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            listener.accepted.append((r, w))
            listener.accepted_event.set()

        listener.server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        return listener

    @property
    def addr(self) -> Addr:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return (str(host), int(port))

    async def first_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await asyncio.wait_for(self.accepted_event.wait(), WAIT)
        return self.accepted[0]

    async def close(self) -> None:
        for _, writer in self.accepted:
            writer.close()
        if self.server is not None:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), WAIT)


def closed_port() -> int:
    """A loopback TCP port with nothing listening (bound, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sip_request(
    method: str = "OPTIONS",
    *,
    via: str = "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-test-1",
    call_id: str = "call-1@test",
    cseq: int = 1,
    body: bytes = b"",
    extra: tuple[str, ...] = (),
) -> bytes:
    """A well-formed request as raw bytes (Content-Length right)."""
    lines = [
        f"{method} sip:callctl@127.0.0.1 SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        "From: <sip:peer@127.0.0.1>;tag=peer-tag",
        "To: <sip:callctl@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *extra,
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body
