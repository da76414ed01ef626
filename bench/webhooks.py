"""Webhook delivery benchmark: events per second and delivery latency to a local receiver.

    python -m bench webhooks                 # ~20k-event backlog + 3k-event latency run
    python -m bench webhooks --quick         # a few seconds (CI smoke)
    python -m bench webhooks --database-url postgresql+asyncpg://user@127.0.0.1/db

The whole path is real: events are written to the outbox (one transaction each, as the
call service does), the dispatcher signs them, POSTs them over HTTP/1.1 keep-alive to a
receiver on 127.0.0.1 (answering 204 at once) and records each attempt in the database.

* throughput: a backlog of events over many calls is written first; then the dispatcher
  is started and the time until the receiver has them all gives events/s (per-call order
  holds, so a call's events go one after the other; calls go in parallel);
* latency: events are written at a steady rate with ``notify()`` after each commit; the
  time from the commit to the receiver reading the request gives p50/p99.

The default database is a temporary SQLite file; a PostgreSQL URL must point to a
database the benchmark may migrate; the rows it made are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import delete

from app.store.db import Database
from app.store.ids import new_call_id
from app.store.migrate import upgrade
from app.store.models import Call
from app.store.repositories import EventRepository
from app.webhooks.config import WebhookConfig
from app.webhooks.dispatcher import WebhookDispatcher
from app.webhooks.signing import SignatureVerificationError, SigningKey, verify

SECRET = "whsec_" + base64.b64encode(b"bench-key-0123456789abcdef").decode()
_RESPONSE = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


class Receiver:
    """Minimal keep-alive HTTP/1.1 server: notes when each webhook-id arrived, answers 204."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.bad_signatures = 0
        self._key = SigningKey.parse(SECRET)
        self._expected = 0
        self._all_in = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def expect(self, count: int) -> None:
        self._expected = count
        self._all_in.clear()
        self._check()

    def _check(self) -> None:
        if self._expected and len(self.arrivals) >= self._expected:
            self._all_in.set()

    async def wait_all(self, timeout: float) -> None:  # noqa: ASYNC109 - a CLI's bound
        async with asyncio.timeout(timeout):
            await self._all_in.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = time.perf_counter()
                headers: dict[str, str] = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if value:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                if self.requests % 50 == 1:  # spot-check signatures, cheaply
                    try:
                        verify(key=self._key, headers=headers, body=body, now=time.time())
                    except SignatureVerificationError:
                        self.bad_signatures += 1
                self.arrivals.setdefault(headers.get("webhook-id", ""), arrived)
                self._check()
                writer.write(_RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _receiver_process(conn: Connection) -> None:
    """Child process: serve, and report the arrivals each time the parent's count is met."""

    async def serve() -> None:
        receiver = Receiver()
        await receiver.start()
        conn.send(receiver.port)
        loop = asyncio.get_running_loop()
        while True:
            command, count = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            receiver.expect(count)
            await receiver.wait_all(timeout=600)
            conn.send((receiver.arrivals, receiver.bad_signatures))
        await receiver.stop()

    asyncio.run(serve())


class RemoteReceiver:
    """:class:`Receiver` in a child process, so that it does not share the dispatcher's CPU.

    Arrival times are ``time.perf_counter()`` in the child: CLOCK_MONOTONIC on Linux, the
    same clock as the parent's.
    """

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.bad_signatures = 0
        self.port = 0
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_receiver_process, args=(child,), daemon=True)

    async def start(self) -> None:
        self._process.start()
        self.port = await asyncio.to_thread(self._conn.recv)

    def expect(self, count: int) -> None:
        self._conn.send(("expect", count))

    async def wait_all(self, timeout: float) -> None:  # noqa: ASYNC109 - a CLI's bound
        async with asyncio.timeout(timeout):
            self.arrivals, self.bad_signatures = await asyncio.to_thread(self._conn.recv)

    async def stop(self) -> None:
        if self._process.is_alive():
            self._conn.send(("stop", 0))
            await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()


def _call(webhook_url: str) -> Call:
    now = datetime.now(UTC)
    return Call(
        id=new_call_id(),
        direction="outbound",
        state="establishing",
        from_uri="sip:bench@127.0.0.1",
        to_uri="sip:peer@127.0.0.1",
        local_uri="sip:bench@127.0.0.1",
        remote_uri="sip:peer@127.0.0.1",
        sip_call_id=f"{secrets.token_hex(8)}@127.0.0.1",
        local_tag=secrets.token_hex(4),
        transport="udp",
        webhook_url=webhook_url,
        created_at=now,
        updated_at=now,
    )


def _payload(call: Call, sequence: int) -> dict[str, Any]:
    # About the size of a real event: the call object and a field or two.
    return {
        "call": {
            "id": call.id,
            "direction": call.direction,
            "state": "establishing",
            "from": call.from_uri,
            "to": call.to_uri,
            "sip": {"call_id": call.sip_call_id, "local_tag": call.local_tag},
            "client_state": "bench",
            "webhook_url": call.webhook_url,
        },
        "sip_code": 180,
        "n": sequence,
    }


async def _add_calls(database: Database, count: int, url: str) -> list[Call]:
    calls = [_call(url) for _ in range(count)]
    async with database.session() as session:
        session.add_all(calls)
        await session.commit()
    return calls


async def _append(database: Database, call: Call, sequence: int) -> str:
    async with database.session() as session:
        event = await EventRepository(session).append(
            call_id=call.id, type="call.progress", payload=_payload(call, sequence)
        )
        await session.commit()
    return event.id


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


async def _throughput(
    database: Database,
    receiver: Receiver | RemoteReceiver,
    config: WebhookConfig,
    calls: int,
    per_call: int,
) -> tuple[int, float]:
    rows = await _add_calls(database, calls, f"http://127.0.0.1:{receiver.port}/hook")
    ids: list[str] = []
    for sequence in range(1, per_call + 1):
        for call in rows:
            ids.append(await _append(database, call, sequence))
    receiver.expect(len(receiver.arrivals) + len(ids))
    dispatcher = WebhookDispatcher(database.sessionmaker, config)
    started = time.perf_counter()
    await dispatcher.start()
    try:
        await receiver.wait_all(timeout=600)
        elapsed = max(receiver.arrivals[i] for i in ids) - started
    finally:
        await dispatcher.stop(flush_timeout=5)
    return len(ids), elapsed


async def _latency(
    database: Database,
    receiver: Receiver | RemoteReceiver,
    config: WebhookConfig,
    calls: int,
    events: int,
    rate: float,
) -> list[float]:
    rows = await _add_calls(database, calls, f"http://127.0.0.1:{receiver.port}/hook")
    dispatcher = WebhookDispatcher(database.sessionmaker, config)
    await dispatcher.start()
    committed: dict[str, float] = {}
    try:
        receiver.expect(len(receiver.arrivals) + events)
        interval = 1.0 / rate
        next_at = time.perf_counter()
        for n in range(events):
            call = rows[n % calls]
            event_id = await _append(database, call, n // calls + 1)
            committed[event_id] = time.perf_counter()
            dispatcher.notify()
            next_at += interval
            pause = next_at - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
        await receiver.wait_all(timeout=600)
    finally:
        await dispatcher.stop(flush_timeout=5)
    return [(receiver.arrivals[i] - t) * 1000 for i, t in committed.items()]


async def _run(args: argparse.Namespace) -> int:
    owned_file: str | None = None
    url = args.database_url
    if url is None:
        fd, owned_file = tempfile.mkstemp(prefix="callctl-bench-", suffix=".db")
        os.close(fd)
        url = f"sqlite+aiosqlite:///{owned_file}"
    database = Database.from_url(url)
    receiver: Receiver | RemoteReceiver = Receiver() if args.same_process else RemoteReceiver()
    try:
        await upgrade(database.engine)
        await receiver.start()
        config = WebhookConfig(
            keys=(SigningKey.parse(SECRET),),
            allow_private=True,
            timeout=10.0,
            max_in_flight=args.concurrency,
            max_per_host=args.per_host,
        )
        backend = database.engine.dialect.name
        print(
            f"python {sys.version.split()[0]}, {backend}, max_in_flight={args.concurrency}, "
            f"max_per_host={args.per_host}, "
            "signed, HTTP/1.1 keep-alive to 127.0.0.1 (204), receiver in "
            + ("this process" if args.same_process else "a child process")
        )
        count, elapsed = await _throughput(
            database, receiver, config, args.calls, args.events_per_call
        )
        print(
            f"throughput: {count} events over {args.calls} calls in {elapsed:.2f} s "
            f"= {count / elapsed:,.0f} events/s"
        )
        latencies = await _latency(
            database, receiver, config, args.latency_calls, args.latency_events, args.rate
        )
        print(
            f"latency (commit -> received), {len(latencies)} events at {args.rate:g}/s: "
            f"p50 {_percentile(latencies, 0.5):.1f} ms, p99 {_percentile(latencies, 0.99):.1f} ms, "
            f"max {max(latencies):.1f} ms"
        )
        if receiver.bad_signatures:
            print(f"ERROR: {receiver.bad_signatures} requests failed signature verification")
            return 1
        return 0
    finally:
        await receiver.stop()
        if owned_file is None:
            async with database.session() as session:
                await session.execute(delete(Call).where(Call.from_uri == "sip:bench@127.0.0.1"))
                await session.commit()
        await database.dispose()
        if owned_file is not None:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(owned_file + suffix)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench webhooks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds (CI smoke)")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--calls", type=int, default=None, help="calls in the backlog run")
    parser.add_argument("--events-per-call", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=64, help="max deliveries in flight")
    parser.add_argument(
        "--per-host", type=int, default=16, help="max deliveries in flight to one origin"
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run the receiver in the benchmark's own event loop (default: a child process)",
    )
    parser.add_argument("--latency-calls", type=int, default=50)
    parser.add_argument("--latency-events", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="events/s in the latency run")
    args = parser.parse_args(argv)
    quick = args.quick
    args.calls = args.calls or (50 if quick else 200)
    args.events_per_call = args.events_per_call or (10 if quick else 100)
    args.latency_events = args.latency_events or (300 if quick else 3000)
    args.rate = args.rate or (300.0 if quick else 500.0)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
