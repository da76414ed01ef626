"""A real HTTP/1.1 webhook receiver on 127.0.0.1 whose answers the test programs.

``asyncio.start_server`` with a minimal parser (request line, headers, Content-Length
body, keep-alive): enough for httpx, small enough to see what it does. Each request is
recorded, then answered by what ``plan(request)`` returns:

* :class:`Reply` (status, body): e.g. 200, 500, 410;
* :class:`Hang`: hold the answer until the test releases it (or the receiver stops), so
  the sender times out or a test can look at the state in the meantime;
* :class:`Close`: drop the connection without answering.

Everything is bounded: a hang lasts at most ``MAX_HANG_S`` and ``stop()`` releases all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

# Upper bound of a Hang, so that a forgotten release cannot keep a test alive.
MAX_HANG_S = 30.0
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hang:
    """Hold the request until ``release`` is set, then answer ``then`` (if still there)."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    pass


Behaviour = Reply | Hang | Close


@dataclass(slots=True, kw_only=True)
class Received:
    index: int
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    answered: int | None = None  # the status sent, None if none was (closed, hung up)

    @property
    def acknowledged(self) -> bool:
        return self.answered is not None and 200 <= self.answered <= 299


def _always_ok(_request: Received) -> Behaviour:
    return Reply()


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.plan: Callable[[Received], Behaviour] = _always_ok
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()
        self._hangs: list[asyncio.Event] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        for release in self._hangs:
            release.set()
        if self._server is not None:
            self._server.close()
        # Dropping the connections ends every handler (their reads see EOF).
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=MAX_HANG_S)
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_for(
        self,
        predicate: Callable[[list[Received]], bool],
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> None:
        """Until ``predicate(requests)`` holds; bounded, for liveness, not for timing."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.requests))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is to be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        if len(head) > _MAX_HEAD:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = Received(
            index=len(self.requests), method=method, path=path, headers=headers, body=body
        )
        behaviour = self.plan(request)
        self.requests.append(request)
        await self._notify()

        if isinstance(behaviour, Close):
            return False
        if isinstance(behaviour, Hang):
            self._hangs.append(behaviour.release)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MAX_HANG_S):
                    await behaviour.release.wait()
            if reader.at_eof():
                return False
            behaviour = behaviour.then
        response = (
            f"HTTP/1.1 {behaviour.status} X\r\n"
            f"content-type: {behaviour.content_type}\r\n"
            f"content-length: {len(behaviour.body)}\r\n\r\n"
        ).encode() + behaviour.body
        # Marked before writing: the sender may send its next request as soon as it reads.
        request.answered = behaviour.status
        writer.write(response)
        await writer.drain()
        await self._notify()
        return headers.get("connection", "").lower() != "close"
