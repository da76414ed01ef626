"""POST /v1/calls through its own route: a plain request skips FastAPI's dependency solving,
anything else goes FastAPI's way; both answer alike.

The app runs with its lifespan and SIP on a free loopback port; the far end is a silent
UDP socket (the INVITE is never answered, so the call stays ``establishing``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Message

from app.api.actions import _call_response, _plain_dial, get_call_service
from app.api.schemas import Call
from app.main import create_app
from app.settings import Settings
from app.store.resources import call_resource

KEY = "Idempotency-Key"


@pytest.fixture
def silent_peer() -> Iterator[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        yield f"sip:bob@127.0.0.1:{sink.getsockname()[1]}"


@pytest.fixture
async def sip_app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    settings = make_settings(rtp_ports="32000-32999", drain_seconds=1)
    application = create_app(settings, sip_port=0)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(sip_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sip_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callctl.test") as client:
        yield client


def _request(app: FastAPI, body: bytes, headers: list[tuple[str, str]]) -> Request:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/calls",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "app": app,
    }
    return Request(scope, receive)


async def _call_count(http: httpx.AsyncClient) -> int:
    return len((await http.get("/v1/calls")).json()["data"])


async def test_plain_and_generic_requests_answer_alike(
    http: httpx.AsyncClient, silent_peer: str
) -> None:
    body = json.dumps({"to": silent_peer, "client_state": "same"}).encode()
    plain = {"content-type": "application/json", KEY: "k-1"}
    # Not plain (a charset parameter): FastAPI reads and validates this one.
    generic = {"content-type": "application/json; charset=utf-8", KEY: "k-1"}

    first = await http.post("/v1/calls", content=body, headers=plain)
    assert first.status_code == 201, first.text
    assert first.headers["content-type"] == "application/json"
    replays = [
        await http.post("/v1/calls", content=body, headers=headers) for headers in (generic, plain)
    ]
    assert [r.status_code for r in replays] == [200, 200]
    assert replays[0].content == replays[1].content
    for name in ("content-type", "content-length"):
        assert replays[0].headers[name] == replays[1].headers[name]
    assert replays[0].json()["id"] == first.json()["id"]
    # The 201 shows the call as the replays do (the peer never answers: nothing moved).
    assert first.json() == replays[0].json()
    assert await _call_count(http) == 1


JSON = ("content-type", "application/json")
TO = {"to": "sip:bob@127.0.0.1"}


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (TO, [("content-type", "application/json; charset=utf-8")]),
        (TO, [("content-type", "text/plain")]),
        (TO, []),  # no content type: FastAPI decides whether it is JSON
        (TO, [JSON, (KEY, "a"), (KEY, "b")]),
        (TO, [JSON, (KEY, "")]),
        (TO, [JSON, (KEY, "k" * 256)]),
        (b"{not json", [JSON]),
        (b"\xff\xfe", [JSON]),
        (b"", [JSON]),
        ([TO], [JSON]),
        ({"to": "bob@127.0.0.1"}, [JSON]),
        ({**TO, "timout": 5}, [JSON]),
        ({}, [JSON]),
    ],
)
async def test_plain_dial_declines_before_anything_happens(
    sip_app: FastAPI, http: httpx.AsyncClient, body: Any, headers: list[tuple[str, str]]
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert await _plain_dial(_request(sip_app, raw, headers)) is None
    assert await _call_count(http) == 0


async def test_plain_dial_places_the_call(
    sip_app: FastAPI, http: httpx.AsyncClient, silent_peer: str
) -> None:
    raw = json.dumps({"to": silent_peer}).encode()
    headers = [("content-type", "application/json"), (KEY, "k-2")]
    response = await _plain_dial(_request(sip_app, raw, headers))
    assert response is not None and response.status_code == 201
    call = json.loads(bytes(response.body))
    assert call["to"] == silent_peer and call["state"] == "establishing"
    assert (await http.get(f"/v1/calls/{call['id']}")).json() == call


async def test_dependency_overrides_go_the_generic_way(sip_app: FastAPI) -> None:
    sip_app.dependency_overrides[get_call_service] = get_call_service
    try:
        raw = json.dumps({"to": "sip:bob@127.0.0.1"}).encode()
        request = _request(sip_app, raw, [("content-type", "application/json")])
        assert await _plain_dial(request) is None
    finally:
        sip_app.dependency_overrides.clear()


async def test_plain_dial_checks_the_key_before_the_service(
    make_settings: Callable[..., Settings],
) -> None:
    application = create_app(make_settings(api_keys="k1"), sip=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"to": "sip:bob@127.0.0.1"}
            denied = await client.post("/v1/calls", json=body)
            wrong = await client.post(
                "/v1/calls", json=body, headers={"Authorization": "Bearer k2"}
            )
            allowed = await client.post(
                "/v1/calls", json=body, headers={"Authorization": "Bearer k1"}
            )
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == 'Bearer realm="callctl"'
    assert wrong.status_code == 401
    assert "invalid_token" in wrong.headers["www-authenticate"]
    assert allowed.status_code == 503  # past the key: no SIP in this app
    assert allowed.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"state": "establishing", "last_response_code": 180, "last_response_reason": "Ringing"},
        {"direction": "inbound", "remote_display_name": 'Zoë "Z" Ünïcode ☎'},
        {
            "state": "terminated",
            "end_cause": "rejected",
            "end_by": "remote",
            "end_sip_code": 486,
            "client_state": "tab\there",
            "webhook_url": "https://hooks.example.com/x",
        },
    ],
)
async def test_call_response_is_what_response_model_would_send(
    call_factory: Callable[..., Any], overrides: dict[str, Any]
) -> None:
    """The dial's pre-serialized body and headers equal FastAPI's ``response_model=Call``."""
    resource = call_resource(call_factory(**overrides))
    reference = FastAPI()

    @reference.post("/call", response_model=Call, status_code=201)
    async def answer() -> Call:
        return Call.model_validate(resource)

    transport = httpx.ASGITransport(app=reference)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        expected = await client.post("/call")
    ours = _call_response(resource, 201)
    assert ours.status_code == expected.status_code == 201
    assert bytes(ours.body) == expected.content
    assert ours.headers["content-type"] == expected.headers["content-type"]
    assert ours.headers["content-length"] == expected.headers["content-length"]
