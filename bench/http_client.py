"""Client CPU per webhook POST: httpx's default transport against our HTTP/1.1 transport.

    python -m bench.http_client                  # 20000 requests per run
    python -m bench.http_client -n 2000          # quicker
    python -m bench.http_client --loop asyncio   # the default loop instead of uvloop

POSTs small JSON bodies the way the dispatcher does (``client.stream("POST", ...)``, the
body read with ``aiter_bytes()``) to a minimal keep-alive HTTP/1.1 server on 127.0.0.1,
one request at a time and then with ``--in-flight`` (50) at once, through

* ``httpx``: an ``httpx.AsyncClient`` on httpx's own transport (httpcore, anyio, h11),
* ``http11``: the same client on ``app.webhooks.http11.Http11Transport``,

and prints requests/s and the client's CPU microseconds per request (``time.process_time``
of this process around each run). The server runs in a subprocess (its own CPU is not
counted) and stops by itself after ``--server-seconds`` if this process dies first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httptools

_BODY = (
    b'{"id":"evt_0123456789","type":"call.progress","created_at":"2024-01-01T00:00:00Z",'
    b'"data":{"call":{"id":"call_0123456789","state":"establishing"},"n":1}}'
)
_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
_WARMUP = 500


# -- the server (subprocess) ------------------------------------------------------------------


class _ServerProtocol(asyncio.Protocol):
    """Answers each request at its end with the same small 200; keep-alive."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_message_complete(self) -> None:
        assert self._transport is not None
        self._transport.write(_RESPONSE)


async def _serve(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_ServerProtocol, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Stops when the parent closes our stdin, or after ``seconds`` at most.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async with asyncio.timeout(seconds):
            await reader.read()
    except TimeoutError:
        pass
    server.close()


# -- the client --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    mode: str
    requests: int
    wall_s: float
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6


def _httpx_transport(in_flight: int) -> Any:
    import httpx

    limits = httpx.Limits(
        max_connections=in_flight, max_keepalive_connections=in_flight, keepalive_expiry=30.0
    )
    return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)


def _http11_transport(in_flight: int) -> Any:
    from app.webhooks.http11 import Http11Transport

    return Http11Transport(max_connections=in_flight, keepalive_expiry=30.0)


TRANSPORTS: dict[str, Callable[[int], Any]] = {
    "httpx": _httpx_transport,
    "http11": _http11_transport,
}


async def _post(client: Any, url: str, headers: dict[str, str]) -> None:
    async with client.stream("POST", url, content=_BODY, headers=headers) as response:
        received = bytearray()
        async for chunk in response.aiter_bytes():
            received += chunk
        if response.status_code != 200 or bytes(received) != b"{}":
            raise RuntimeError(f"unexpected answer {response.status_code} {bytes(received)!r}")
        dict(response.headers)


async def _run(name: str, url: str, requests: int, in_flight: int) -> list[Result]:
    import httpx

    client = httpx.AsyncClient(
        transport=TRANSPORTS[name](in_flight),
        timeout=httpx.Timeout(10.0),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": "callctl-bench"},
    )
    headers = {"content-type": "application/json", "webhook-id": "msg_0123456789"}
    results: list[Result] = []
    async with client:
        for _ in range(_WARMUP):
            await _post(client, url, headers)

        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            await _post(client, url, headers)
        results.append(
            Result(
                name,
                "sequential",
                requests,
                time.perf_counter() - wall,
                time.process_time() - cpu,
            )
        )

        async def worker(count: int) -> None:
            for _ in range(count):
                await _post(client, url, headers)

        shares = [requests // in_flight + (i < requests % in_flight) for i in range(in_flight)]
        wall, cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as group:
            for share in shares:
                group.create_task(worker(share))
        results.append(
            Result(
                name,
                f"{in_flight} in flight",
                requests,
                time.perf_counter() - wall,
                time.process_time() - cpu,
            )
        )
    return results


def _run_on(loop_name: str, coroutine: Coroutine[Any, Any, Any]) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_client", description=__doc__)
    parser.add_argument("-n", "--requests", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--only", choices=sorted(TRANSPORTS), action="append")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--server-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)

    if args.serve:
        _run_on(args.loop, _serve(args.server_seconds))
        return 0

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.http_client",
            "--serve",
            "--loop",
            args.loop,
            "--server-seconds",
            str(args.server_seconds),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.getcwd(),
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/hook"
        results: list[Result] = []
        for name in args.only or list(TRANSPORTS):
            results += _run_on(args.loop, _run(name, url, args.requests, args.in_flight))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    print(f"{args.requests} POSTs per run, {args.loop} loop, client process CPU only")
    print(f"{'transport':<10} {'mode':<14} {'requests/s':>11} {'CPU us/request':>15}")
    for result in results:
        print(
            f"{result.name:<10} {result.mode:<14} {result.per_second:>11.0f} {result.cpu_us:>15.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
