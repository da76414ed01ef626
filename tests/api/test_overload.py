"""POST /v1/calls refused by admission control: a 503 problem with Retry-After, nothing
written, nothing sent; an idempotent replay of an earlier call is still answered.

The app runs with its lifespan, SIP on a free loopback port and ``CALLCTL_MAX_CALLS=1``;
the far end is a silent UDP socket, so the first call stays ``establishing`` (one up).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.calls.admission import AdmissionControl
from app.main import create_app
from app.settings import Settings
from app.store.db import Database
from app.store.models import CallEvent

AppRunner = Callable[..., AbstractAsyncContextManager[FastAPI]]

PROBLEM = "application/problem+json"


@pytest.fixture
def silent_peer() -> Iterator[tuple[str, socket.socket]]:
    """A SIP URI whose host swallows every datagram (no answer ever), and its socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        yield f"sip:bob@127.0.0.1:{sink.getsockname()[1]}", sink


@pytest.fixture
async def capped_app(run_app: AppRunner) -> AsyncIterator[FastAPI]:
    async with run_app(max_calls=1, rtp_ports="33000-33999", drain_seconds=1) as application:
        yield application


@pytest.fixture
async def http(capped_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=capped_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callctl.test") as client:
        yield client


def _datagrams(sink: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sink.recv(65535))
        except BlockingIOError:
            return out


async def test_dial_over_the_cap_is_a_503_problem_and_writes_nothing(
    http: httpx.AsyncClient,
    capped_app: FastAPI,
    database: Database,
    silent_peer: tuple[str, socket.socket],
) -> None:
    target, sink = silent_peer
    first = await http.post("/v1/calls", json={"to": target}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201, first.text
    call = first.json()
    assert call["state"] == "establishing"

    refused = await http.post(
        "/v1/calls", json={"to": target, "client_state": "x"}, headers={"Idempotency-Key": "k2"}
    )
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == PROBLEM
    assert int(refused.headers["retry-after"]) >= 1
    body: dict[str, Any] = refused.json()
    assert body["type"] == "urn:callctl:problem:overloaded"
    assert body["title"] == "Overloaded"
    assert body["status"] == 503
    assert body["reason"] == "max_calls"
    assert body["retry_after"] == int(refused.headers["retry-after"])
    assert "limit of 1 concurrent call(s) is reached" in body["detail"]

    # An idempotent replay of the call that is up is not a new call: answered as before.
    replay = await http.post("/v1/calls", json={"to": target}, headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 200, replay.text
    assert replay.json()["id"] == call["id"]

    # Nothing was written for the refused call: one row, one event, no key k2.
    listed = (await http.get("/v1/calls")).json()["data"]
    assert [c["id"] for c in listed] == [call["id"]]
    async with database.session() as session:
        events = (await session.execute(select(CallEvent.call_id))).scalars().all()
    assert events == [call["id"]]
    # ... and the silent peer saw INVITEs of one call only (the first one's and its copies).
    call_ids = {
        line
        for data in _datagrams(sink)
        for line in data.split(b"\r\n")
        if line.startswith(b"Call-ID:")
    }
    assert call_ids == {f"Call-ID: {call['sip']['call_id']}".encode()}

    admission: AdmissionControl = capped_app.state.admission
    assert admission.shed[("api", "max_calls")] == 1
    metrics = (await http.get("/metrics")).text
    assert 'callctl_calls_shed_total{reason="max_calls",source="api"} 1.0' in metrics
    assert "callctl_event_loop_lag_seconds" in metrics
    assert "callctl_admitted_fraction 1.0" in metrics


def test_openapi_describes_the_503_with_retry_after(
    make_settings: Callable[..., Settings],
) -> None:
    document = create_app(make_settings(), sip=False).openapi()
    response = document["paths"]["/v1/calls"]["post"]["responses"]["503"]
    assert "Retry-After" in response["headers"]
    assert "overloaded" in response["description"]
    assert PROBLEM in response["content"]
