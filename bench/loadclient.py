"""Open-loop async HTTP load client for ``POST /v1/calls`` at a steady rate.

    python -m bench.loadclient --url http://127.0.0.1:8000 --to sip:bench@127.0.0.1:5080 \\
        --rate 200 --seconds 5

Request *i* is due at ``start + i / rate`` whatever happened to the earlier ones (open loop:
a slow server does not slow the offered load down, so its latency is not hidden). Each
request goes out on an idle keep-alive connection of a pool; when all of them are busy a
new one is opened, up to ``--connections``; past that the request waits, and its latency
still counts from the time it was due. The HTTP/1.1 client is a few lines over asyncio
streams (Content-Length bodies only), lighter than a general client library so that
the load generator leaves the CPU to the service under test.

For each request it records the wall-clock time it was due and sent, the status, the
time to the response, and from a 201 body the call's ``id`` and SIP ``Call-ID``
(``sip.call_id``), which the outbound benchmark matches with the INVITE SIPp received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(slots=True)
class RequestRecord:
    due: float  # wall clock, when the request was scheduled
    sent: float = 0.0  # wall clock, when it was written
    status: int = 0  # 0: no response (connection error or timeout)
    elapsed: float = 0.0  # seconds from due to the full response
    call_id: str | None = None
    sip_call_id: str | None = None
    problem_type: str | None = None
    retry_after: str | None = None
    error: str | None = None


@dataclass(slots=True)
class LoadResult:
    rate: float
    seconds: float
    records: list[RequestRecord] = field(default_factory=list)
    wall: float = 0.0
    late_starts: int = 0  # requests that waited for a free connection

    def statuses(self) -> dict[str, int]:
        return {str(k): v for k, v in Counter(r.status for r in self.records).items()}

    def ok(self) -> int:
        return sum(1 for r in self.records if r.status == 201)

    def summary(self) -> dict[str, Any]:
        from bench.harness import percentiles

        done = [r.elapsed for r in self.records if r.status]
        return {
            "offered_rate": self.rate,
            "requests": len(self.records),
            "statuses": self.statuses(),
            "errors": Counter(r.error for r in self.records if r.error).most_common(3),
            "waited_for_connection": self.late_starts,
            "http_latency": percentiles(done),
            "wall": round(self.wall, 3),
        }


#: A pooled connection idle longer than this is closed instead of reused: servers close
#: idle keep-alive connections (uvicorn after 5 s), and a request written into one that
#: the server is closing gets no answer.
MAX_IDLE_SECONDS = 2.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    async def request(self, head: bytes, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        self.writer.write(head + body)
        status_line = await self.reader.readuntil(b"\r\n")
        raw_headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in raw_headers.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        payload = await self.reader.readexactly(length) if length else b""
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
            raise ConnectionResetError("server closed the connection")
        return status, headers, payload

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class LoadClient:
    """POSTs JSON bodies to one URL at a steady rate over a pool of keep-alive connections."""

    def __init__(
        self,
        url: str,
        *,
        connections: int = 256,
        timeout: float = 10.0,
        api_key: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.max_connections = connections
        self.timeout = timeout
        self.api_key = api_key
        self.idle: list[Connection] = []
        self.open = 0
        self.freed = asyncio.Condition()

    async def _acquire(self) -> tuple[Connection, bool]:
        waited = False
        while True:
            while self.idle:
                conn = self.idle.pop()
                if time.monotonic() - conn.idle_since <= MAX_IDLE_SECONDS:
                    return conn, waited
                conn.close()
                self.open -= 1
            if self.open < self.max_connections:
                self.open += 1
                try:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                except OSError:
                    self.open -= 1
                    raise
                return Connection(reader, writer), waited
            waited = True
            async with self.freed:
                await self.freed.wait()

    async def _release(self, conn: Connection | None) -> None:
        if conn is not None:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            self.open -= 1
        async with self.freed:
            self.freed.notify()

    def _head(self, path: str, body: bytes, extra: dict[str, str]) -> bytes:
        lines = [
            f"POST {self.base_path}{path} HTTP/1.1",
            f"host: {self.host}:{self.port}",
            "content-type: application/json",
            f"content-length: {len(body)}",
        ]
        if self.api_key:
            lines.append(f"authorization: Bearer {self.api_key}")
        lines += [f"{k}: {v}" for k, v in extra.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _one(self, record: RequestRecord, path: str, body: bytes, result: LoadResult) -> None:
        conn: Connection | None = None
        try:
            conn, waited = await self._acquire()
            if waited:
                result.late_starts += 1
            record.sent = time.time()
            status, headers, payload = await asyncio.wait_for(
                conn.request(self._head(path, body, {}), body),
                self.timeout,
            )
            record.status = status
            record.elapsed = time.time() - record.due
            if payload and status < 300:
                data = json.loads(payload)
                record.call_id = data.get("id")
                record.sip_call_id = (data.get("sip") or {}).get("call_id")
            elif payload:
                with contextlib.suppress(ValueError, AttributeError):
                    record.problem_type = json.loads(payload).get("type")
            retry_after = headers.get(b"retry-after")
            if retry_after is not None:
                record.retry_after = retry_after.decode()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            record.error = type(exc).__name__
            if conn is not None:
                conn.close()
                conn = None
                await self._release(None)
            return
        await self._release(conn)

    async def post(self, path: str, payload: dict[str, Any]) -> int:
        """One POST outside of a rate run (e.g. a REST action); its status, 0 on error."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        conn: Connection | None = None
        try:
            conn, _ = await self._acquire()
            status, _, _ = await asyncio.wait_for(
                conn.request(self._head(path, body, {}), body), self.timeout
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            if conn is not None:
                conn.close()
                await self._release(None)
            return 0
        await self._release(conn)
        return status

    async def run(
        self,
        *,
        rate: float,
        seconds: float,
        body_for: Callable[[int], dict[str, Any]],
        path: str = "/v1/calls",
    ) -> LoadResult:
        total = max(1, round(rate * seconds))
        result = LoadResult(rate=rate, seconds=seconds)
        tasks: list[asyncio.Task[None]] = []
        start_mono = time.monotonic()
        start_wall = time.time()
        for i in range(total):
            due_mono = start_mono + i / rate
            delay = due_mono - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            record = RequestRecord(due=start_wall + i / rate)
            result.records.append(record)
            body = json.dumps(body_for(i), separators=(",", ":")).encode()
            tasks.append(asyncio.create_task(self._one(record, path, body, result)))
        await asyncio.gather(*tasks)
        result.wall = time.monotonic() - start_mono
        return result

    async def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def post_calls(
    url: str,
    *,
    to: str,
    rate: float,
    seconds: float,
    connections: int = 256,
    request_timeout: float = 10.0,
    api_key: str | None = None,
    extra_body: dict[str, Any] | None = None,
) -> LoadResult:
    """Dial ``to`` at ``rate`` calls per second for ``seconds`` through ``POST /v1/calls``."""
    client = LoadClient(url, connections=connections, timeout=request_timeout, api_key=api_key)
    base = {"to": to, "from": "sip:bench@127.0.0.1", **(extra_body or {})}

    def body_for(i: int) -> dict[str, Any]:
        return {**base, "client_state": f"bench-{i}"}

    try:
        return await client.run(rate=rate, seconds=seconds, body_for=body_for)
    finally:
        await client.close()


def run_in_loop(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is there (cheaper per request), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadclient",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="callctl base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--to", required=True, help="SIP URI to dial")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--api-key", default=os.environ.get("CALLCTL_BENCH_API_KEY"))
    args = parser.parse_args(argv)
    result = run_in_loop(
        post_calls(
            args.url,
            to=args.to,
            rate=args.rate,
            seconds=args.seconds,
            connections=args.connections,
            api_key=args.api_key,
        )
    )
    print(json.dumps(result.summary(), indent=2))
    return 0 if result.ok() == len(result.records) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
