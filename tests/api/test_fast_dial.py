"""POST /v1/calls answered by ``DialFastPath``: the plain request takes it and gets what
the FastAPI route gives; every other request goes to the route, body intact.

The route is reached on purpose with ``Content-Type: application/json; charset=utf-8``
(the fast path takes only ``application/json``), so the same request can be sent both
ways and the answers compared. The app runs with its lifespan and SIP on a free loopback
port; the far end is a silent UDP socket (the call stays ``establishing``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from app.api.fast_dial import DialFastPath

AppRunner = Callable[..., AbstractAsyncContextManager[FastAPI]]
PLAIN = {"content-type": "application/json"}
ROUTE = {"content-type": "application/json; charset=utf-8"}
# Fields that differ from one call to the next.
PER_CALL = {"id", "created_at", "updated_at", "sip"}


@pytest.fixture
def start(run_app: AppRunner) -> Callable[..., AbstractAsyncContextManager[FastAPI]]:
    def run(**overrides: Any) -> AbstractAsyncContextManager[FastAPI]:
        overrides.setdefault("rtp_ports", "35000-35999")
        overrides.setdefault("drain_seconds", 1)
        return run_app(**overrides)

    return run


async def _fast_path(application: FastAPI, http: httpx.AsyncClient) -> DialFastPath:
    """The DialFastPath in the app's middleware stack (built by a first request)."""
    if application.middleware_stack is None:
        await http.get("/healthz")
    layer: Any = application.middleware_stack
    while layer is not None:
        if isinstance(layer, DialFastPath):
            return layer
        layer = getattr(layer, "app", None)
    raise AssertionError("no DialFastPath in the middleware stack")


@pytest.fixture
async def app(start: Callable[..., AbstractAsyncContextManager[FastAPI]]) -> AsyncIterator[FastAPI]:
    async with start() as application:
        yield application


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callctl.test") as client:
        yield client


async def _post(
    http: httpx.AsyncClient, body: Any, headers: dict[str, str], *, raw: bytes | None = None
) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return await http.post("/v1/calls", content=content, headers=headers)


def _stable(call: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in call.items() if key not in PER_CALL}


async def test_a_plain_dial_takes_the_fast_path_and_answers_as_the_route_does(
    app: FastAPI, http: httpx.AsyncClient, silent_peer: str
) -> None:
    fast = await _fast_path(app, http)
    body = {"to": silent_peer, "client_state": "order-42", "headers": {"X-Account": "7"}}
    quick = await _post(http, body, PLAIN)
    assert fast.answered == 1
    routed = await _post(http, body, ROUTE)
    assert fast.answered == 1  # the charset parameter sent it to the route

    for response in (quick, routed):
        assert response.status_code == 201, response.text
        assert response.headers["content-type"] == "application/json"
    assert quick.json().keys() == routed.json().keys()
    assert _stable(quick.json()) == _stable(routed.json())
    assert quick.json()["sip"].keys() == routed.json()["sip"].keys()
    assert quick.json()["state"] == "establishing"
    # The call the fast path placed is stored like any other.
    stored = await http.get(f"/v1/calls/{quick.json()['id']}")
    assert stored.status_code == 200
    assert stored.json()["client_state"] == "order-42"

    metrics = (await http.get("/metrics")).text
    assert 'callctl_http_requests_total{method="POST",route="/v1/calls",status="201"} 2.0' in (
        metrics
    )


@pytest.mark.parametrize(
    ("body", "raw", "field"),
    [
        ({}, None, ["body", "to"]),
        ({"to": 42}, None, ["body", "to"]),
        ({"to": "sip:bob@example.com", "colour": "red"}, None, ["body", "colour"]),
        (None, b'{"to": "sip:bob@exa', None),
        (None, b"", None),
        (
            {"to": "sip:bob@example.com", "webhook_url": "ftp://example.com/x"},
            None,
            ["body", "webhook_url"],
        ),
    ],
    ids=["missing-to", "to-not-a-string", "unknown-field", "not-json", "empty", "webhook-url"],
)
async def test_what_the_fast_path_refuses_gets_the_route_s_own_422(
    app: FastAPI,
    http: httpx.AsyncClient,
    body: Any,
    raw: bytes | None,
    field: list[str] | None,
) -> None:
    quick = await _post(http, body, PLAIN, raw=raw)
    routed = await _post(http, body, ROUTE, raw=raw)
    assert quick.status_code == 422, quick.text
    assert quick.headers["content-type"] == "application/problem+json"
    assert quick.json() == routed.json()
    if field is not None:
        assert quick.json()["errors"][0]["loc"] == field
    # Nothing was placed either way.
    listed = await http.get("/v1/calls")
    assert listed.json()["data"] == []


async def test_api_keys_are_checked_as_the_route_checks_them(
    start: Callable[..., AbstractAsyncContextManager[FastAPI]], silent_peer: str
) -> None:
    async with start(api_keys="k-one,k-two") as application:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://callctl.test") as http:
            fast = await _fast_path(application, http)
            body = {"to": silent_peer}
            for headers in (
                PLAIN,
                {**PLAIN, "authorization": "Bearer k-three"},
                {**PLAIN, "authorization": "Basic k-one"},
                {**PLAIN, "authorization": "Bearer "},
            ):
                refused = await _post(http, body, headers)
                assert refused.status_code == 401, (headers, refused.text)
                assert refused.headers["www-authenticate"].startswith("Bearer")
            assert fast.answered == 0
            placed = await _post(http, body, {**PLAIN, "authorization": "Bearer k-two"})
            assert placed.status_code == 201, placed.text
            assert fast.answered == 1


async def test_an_idempotency_key_goes_to_the_route(
    app: FastAPI, http: httpx.AsyncClient, silent_peer: str
) -> None:
    fast = await _fast_path(app, http)
    headers = {**PLAIN, "Idempotency-Key": "once"}
    first = await _post(http, {"to": silent_peer}, headers)
    again = await _post(http, {"to": silent_peer}, headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert fast.answered == 0


async def test_a_shed_dial_is_the_same_503_problem_either_way(
    start: Callable[..., AbstractAsyncContextManager[FastAPI]], silent_peer: str
) -> None:
    async with start(max_calls=1) as application:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://callctl.test") as http:
            fast = await _fast_path(application, http)
            assert (await _post(http, {"to": silent_peer}, PLAIN)).status_code == 201
            quick = await _post(http, {"to": silent_peer}, PLAIN)
            routed = await _post(http, {"to": silent_peer}, ROUTE)
            assert fast.answered == 2
            for refused in (quick, routed):
                assert refused.status_code == 503, refused.text
                assert refused.headers["content-type"] == "application/problem+json"
                assert int(refused.headers["retry-after"]) >= 1
            assert quick.json() == routed.json()
            assert quick.json()["reason"] == "max_calls"


# -- the body handed on (ASGI level: an app that records what it received) ----------------


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class _Running:
    """Just what DialFastPath reads of app.state: a service is there, no keys."""

    call_service = object()
    api_keys: tuple[str, ...] = ()


def _scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/v1/calls", "headers": headers}


async def _drive(middleware: DialFastPath, scope: Scope, incoming: list[Message]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return sent


async def test_a_refused_body_read_in_chunks_reaches_the_route_whole() -> None:
    recorder = _Recorder()
    middleware = DialFastPath(recorder, state=_Running())  # type: ignore[arg-type]
    chunks = [b'{"to": ', b'"sip:bob@example.com", ', b'"colour": "red"}']
    incoming: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent = await _drive(middleware, _scope([(b"content-type", b"application/json")]), incoming)
    assert sent[0]["status"] == 204
    assert recorder.messages == [
        {"type": "http.request", "body": b"".join(chunks), "more_body": False}
    ]
    assert middleware.answered == 0


async def test_a_client_gone_mid_body_is_handed_on_as_it_happened() -> None:
    recorder = _Recorder()
    middleware = DialFastPath(recorder, state=_Running())  # type: ignore[arg-type]
    incoming: list[Message] = [
        {"type": "http.request", "body": b'{"to": "sip:b', "more_body": True},
        {"type": "http.disconnect"},
    ]
    await _drive(middleware, _scope([(b"content-type", b"application/json")]), incoming)
    assert recorder.messages == [
        {"type": "http.request", "body": b'{"to": "sip:b', "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert middleware.answered == 0
