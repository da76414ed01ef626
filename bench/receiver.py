"""A fast local webhook receiver for the benchmarks (its own process).

    python -m bench.receiver --port 18080 [--no-accept]

It answers every POST with 200 at once and records each event per call. An inbound call's
``call.initiated`` gets ``{"action": "accept"}`` in the response body (API.md, "Webhook-driven
answer flow"), so the call is answered without a REST round trip. Events are checked after
the run, not while it runs: ``GET /stats`` returns the totals and the per-call checks:

- lost: a call whose sequences are not exactly 1..n, or that has no ``call.ended`` (a
  benchmark waits for the outbox to drain before it asks, bounded);
- out of order: an event that arrived after one with a higher sequence (delivery is in
  order per call, API.md);
- duplicates: a sequence that arrived twice (allowed, delivery is at least once; counted);
- ``call.initiated`` first and ``call.ended`` last.

``POST /reset`` forgets everything. ``POST /configure`` with
``{"answer": "rest", "api": "http://127.0.0.1:PORT"}`` answers inbound calls through
``POST /v1/calls/{id}/accept`` instead (the webhook then gets an empty body, meaning "no
action"): the same flow driven by REST, as a client without the answer flow would.

The HTTP side is a minimal HTTP/1.1 server on ``httptools`` (keep-alive, Content-Length
bodies): a framework would cost more CPU than the service under test on this 2-core
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httptools

ACCEPT_BODY = b'{"action":"accept"}'


@dataclass(slots=True)
class CallRecord:
    direction: str = ""
    sequences: list[int] = field(default_factory=list)
    types: dict[int, str] = field(default_factory=dict)
    end_cause: str | None = None
    first_at: float = 0.0
    ended_at: float = 0.0


class Recorder:
    def __init__(self, *, accept: bool) -> None:
        self.accept = accept
        #: "webhook": accept in the call.initiated response body; "rest": answer that
        #: webhook with an empty body and POST /v1/calls/{id}/accept to ``api`` instead.
        self.answer = "webhook"
        self.api: Any = None  # a bench.loadclient.LoadClient in "rest" mode
        self.rest_accepts: Counter[int] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.calls: dict[str, CallRecord] = {}
        self.events = 0
        self.bad = 0
        self.types: Counter[str] = Counter()
        self.last_event_at = 0.0
        self.started = time.time()

    def reset(self) -> None:
        self.calls.clear()
        self.events = 0
        self.bad = 0
        self.types.clear()
        self.last_event_at = 0.0
        self.started = time.time()
        self.rest_accepts.clear()

    def configure(self, body: bytes) -> None:
        """``{"answer": "webhook"|"rest", "api": "http://127.0.0.1:PORT"}``."""
        from bench.loadclient import LoadClient

        settings = json.loads(body or b"{}")
        self.answer = str(settings.get("answer", "webhook"))
        if self.answer == "rest":
            self.api = LoadClient(str(settings["api"]), connections=64)

    async def _rest_accept(self, call_id: str) -> None:
        status = await self.api.post(f"/v1/calls/{call_id}/accept", {})
        self.rest_accepts[status] += 1

    def record(self, body: bytes) -> bytes:
        """Record one event; the response body to send back."""
        now = time.time()
        try:
            event = json.loads(body)
            kind = str(event["type"])
            call_id = str(event["call_id"])
            sequence = int(event["sequence"])
            call = (event.get("data") or {}).get("call") or {}
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return b""
        self.events += 1
        self.types[kind] += 1
        self.last_event_at = now
        record = self.calls.get(call_id)
        if record is None:
            record = self.calls[call_id] = CallRecord(first_at=now)
        record.sequences.append(sequence)
        record.types[sequence] = kind
        if not record.direction:
            record.direction = str(call.get("direction") or "")
        if kind == "call.ended":
            end = call.get("end") or {}
            record.end_cause = str(end.get("cause"))
            record.ended_at = now
        if self.accept and kind == "call.initiated" and record.direction == "inbound":
            if self.answer == "rest" and self.api is not None:
                task = asyncio.get_running_loop().create_task(self._rest_accept(call_id))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                return b""
            return ACCEPT_BODY
        return b""

    def stats(self) -> dict[str, Any]:
        lost = out_of_order = duplicates = not_ended = bad_first = bad_last = 0
        causes: Counter[str] = Counter()
        examples: list[dict[str, Any]] = []
        for call_id, record in self.calls.items():
            seen: set[int] = set()
            high = 0
            problem = False
            for sequence in record.sequences:
                if sequence in seen:
                    duplicates += 1
                    continue
                if sequence < high:
                    out_of_order += 1
                    problem = True
                seen.add(sequence)
                high = max(high, sequence)
            if seen != set(range(1, high + 1)):
                lost += 1
                problem = True
            if record.end_cause is None:
                not_ended += 1
                problem = True
            else:
                causes[record.end_cause] += 1
                if record.types.get(high) != "call.ended":
                    bad_last += 1
                    problem = True
            if record.types.get(1) != "call.initiated":
                bad_first += 1
                problem = True
            if problem and len(examples) < 5:
                examples.append(
                    {
                        "call_id": call_id,
                        "sequences": record.sequences[:20],
                        "types": [record.types[s] for s in sorted(record.types)],
                    }
                )
        ended = [r.ended_at - r.first_at for r in self.calls.values() if r.end_cause]
        return {
            "calls": len(self.calls),
            "ended": sum(1 for r in self.calls.values() if r.end_cause is not None),
            "events": self.events,
            "bad_requests": self.bad,
            "types": dict(self.types),
            "end_causes": dict(causes),
            "lost": lost,
            "out_of_order": out_of_order,
            "duplicates": duplicates,
            "not_ended": not_ended,
            "initiated_not_first": bad_first,
            "ended_not_last": bad_last,
            "examples": examples,
            "answer": self.answer,
            "rest_accepts": {str(k): v for k, v in self.rest_accepts.items()},
            "idle_seconds": (time.time() - self.last_event_at) if self.last_event_at else None,
            "mean_call_event_span": (sum(ended) / len(ended)) if ended else None,
        }


class HttpProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        status, ctype, payload = b"200 OK", b"application/json", b""
        if method == b"POST" and path == b"/reset":
            self.recorder.reset()
        elif method == b"POST" and path == b"/configure":
            self.recorder.configure(b"".join(self.body))
        elif method == b"POST":
            payload = self.recorder.record(b"".join(self.body))
        elif method == b"GET" and path == b"/stats":
            payload = json.dumps(self.recorder.stats()).encode()
        elif method == b"GET" and path == b"/healthz":
            payload = b'{"ok":true}'
        else:
            status = b"404 Not Found"
        if self.transport is None:
            return
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\ncontent-type: "
            + ctype
            + b"\r\ncontent-length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )
        if not self.parser.should_keep_alive():
            self.transport.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def serve(host: str, port: int, accept: bool) -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder(accept=accept)
    server = await loop.create_server(lambda: HttpProtocol(recorder), host, port, backlog=1024)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _resolve, stop)
    print(f"receiver listening on http://{host}:{port}", flush=True)
    async with server:
        await stop


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.receiver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument(
        "--no-accept", action="store_true", help="do not answer call.initiated with accept"
    )
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to pin to")
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port, not args.no_accept))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
