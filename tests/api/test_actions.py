"""POST /v1/calls and the call actions through HTTP: 422 naming fields, 409 bodies, 404,
Idempotency-Key, 503 without SIP, and the OpenAPI description of the actions.

The app runs with its lifespan and SIP on a free loopback port; the far end is a silent
UDP socket (the INVITE is never answered, so the call stays ``establishing``) or nothing
at all (an unknown call id).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from app.store.db import Database
from app.store.models import Call
from app.store.repositories import CallRepository

ACTIONS = ("progress", "accept", "reject", "cancel", "bye", "hangup")
PROBLEM = "application/problem+json"


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


def _issue(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "urn:callctl:problem:invalid-request"
    assert len(body["errors"]) >= 1
    issue: dict[str, Any] = body["errors"][0]
    return issue


GOOD = {"to": "sip:bob@example.com"}


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({}, ["body", "to"], "required"),
        ({"to": "bob@example.com"}, ["body", "to"], "SIP URI"),
        ({"to": "tel:+15551234567"}, ["body", "to"], "sip: or sips:"),
        ({"to": "sip:bob@example.com\r\nVia: x"}, ["body", "to"], "CR, LF"),
        ({"to": "sip:bob@example.com?Subject=x"}, ["body", "to"], "URI headers"),
        ({**GOOD, "from": "alice"}, ["body", "from"], "SIP URI"),
        ({**GOOD, "display_name": "A\nB"}, ["body", "display_name"], "control"),
        ({**GOOD, "headers": {"Via": "SIP/2.0/UDP x"}}, ["body", "headers"], "'Via'"),
        ({**GOOD, "headers": {"call-id": "x"}}, ["body", "headers"], "'call-id'"),
        ({**GOOD, "headers": {"i": "x"}}, ["body", "headers"], "'i'"),  # compact Call-ID
        ({**GOOD, "headers": {"CSeq": "1 INVITE"}}, ["body", "headers"], "user agent"),
        ({**GOOD, "headers": {"From": "x"}}, ["body", "headers"], "user agent"),
        ({**GOOD, "headers": {"Contact": "x"}}, ["body", "headers"], "user agent"),
        ({**GOOD, "headers": {"X-A": "a\r\nVia: evil"}}, ["body", "headers"], "CR, LF"),
        ({**GOOD, "headers": {"X-A": ["ok", "b\nc"]}}, ["body", "headers"], "CR, LF"),
        ({**GOOD, "headers": {"bad name": "x"}}, ["body", "headers"], "token"),
        ({**GOOD, "headers": {"X-A": []}}, ["body", "headers"], "empty"),
        ({**GOOD, "headers": {f"X-{i}": "v" for i in range(33)}}, ["body", "headers"], "at most"),
        ({**GOOD, "timeout": 0}, ["body", "timeout"], "greater than or equal"),
        ({**GOOD, "timeout": 3601}, ["body", "timeout"], "less than or equal"),
        ({**GOOD, "timeout": "60"}, ["body", "timeout"], "integer"),
        ({**GOOD, "early_media": "yes"}, ["body", "early_media"], "boolean"),
        ({**GOOD, "offer": "maybe"}, ["body", "offer"], "'sdp' or 'none'"),
        ({**GOOD, "webhook_url": "ftp://x.example.com/"}, ["body", "webhook_url"], "http"),
        ({**GOOD, "webhook_url": "http://127.0.0.1/hook"}, ["body", "webhook_url"], "loopback"),
        ({**GOOD, "client_state": "x" * 4097}, ["body", "client_state"], "at most"),
        ({**GOOD, "auth": {"username": "a"}}, ["body", "auth", "password"], "required"),
        ({**GOOD, "auth": {"username": "a", "password": ""}}, ["body", "auth", "password"], ""),
        ({**GOOD, "timout": 5}, ["body", "timout"], "not permitted"),
    ],
)
async def test_dial_422_names_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], loc: list[str], words: str
) -> None:
    issue = _issue(await http.post("/v1/calls", json=body))
    assert issue["loc"] == loc
    assert words in issue["msg"]


@pytest.mark.parametrize(
    ("action", "body", "loc"),
    [
        ("progress", {"status_code": 100}, ["body", "status_code"]),
        ("progress", {"status_code": 200}, ["body", "status_code"]),
        ("progress", {"reason": "a\r\nb"}, ["body", "reason"]),
        ("progress", {"reliable": "true"}, ["body", "reliable"]),
        ("reject", {"status_code": 299}, ["body", "status_code"]),
        ("reject", {"status_code": 700}, ["body", "status_code"]),
        ("accept", {"headers": {"To": "x"}}, ["body", "headers"]),
        ("bye", {"headers": {"Max-Forwards": "1"}}, ["body", "headers"]),
        ("hangup", {"extra": 1}, ["body", "extra"]),
    ],
)
async def test_action_422_names_the_field(
    http: httpx.AsyncClient, action: str, body: dict[str, Any], loc: list[str]
) -> None:
    issue = _issue(await http.post(f"/v1/calls/call_x/{action}", json=body))
    assert issue["loc"] == loc


async def test_idempotency_key_must_be_visible_ascii(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/calls", json=GOOD, headers={"Idempotency-Key": "a b"})
    assert _issue(response)["loc"] == ["header", "Idempotency-Key"]


@pytest.mark.parametrize("action", ACTIONS)
async def test_unknown_call_is_404(http: httpx.AsyncClient, action: str) -> None:
    response = await http.post(f"/v1/calls/call_unknown/{action}")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:callctl:problem:call-not-found"
    assert response.json()["call_id"] == "call_unknown"


async def test_dial_returns_201_and_honours_the_idempotency_key(
    http: httpx.AsyncClient, silent_peer: str
) -> None:
    body = {
        "to": silent_peer,
        "from": "sip:alice@example.com",
        "display_name": "Alice",
        "headers": {"X-Account": "42", "P-Note": ["a", "b"]},
        "timeout": 30,
        "client_state": "order-42",
        "webhook_url": "https://hooks.example.com/callctl",
        "auth": {"username": "alice", "password": "s3cret-pw"},
    }
    first = await http.post("/v1/calls", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    call = first.json()
    assert call["state"] == "establishing"
    assert call["direction"] == "outbound"
    assert call["to"] == silent_peer
    assert call["from"] == "sip:alice@example.com"
    assert call["local_identity"] == {"uri": "sip:alice@example.com", "display_name": "Alice"}
    assert call["client_state"] == "order-42"
    assert call["webhook_url"] == "https://hooks.example.com/callctl"
    assert call["sip"]["call_id"] and call["sip"]["local_tag"]
    assert "s3cret-pw" not in first.text  # credentials are never shown back

    again = await http.post("/v1/calls", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200
    assert again.json()["id"] == call["id"]

    other = await http.post(
        "/v1/calls", json={**body, "client_state": "x"}, headers={"Idempotency-Key": "k-1"}
    )
    assert _issue(other)["loc"] == ["header", "Idempotency-Key"]

    # Without a key, every POST is a new call.
    plain = [await http.post("/v1/calls", json={"to": silent_peer}) for _ in range(2)]
    assert [r.status_code for r in plain] == [201, 201]
    assert plain[0].json()["id"] != plain[1].json()["id"]

    # The events of the first call: call.initiated committed before the 201.
    events = (await http.get(f"/v1/calls/{call['id']}/events")).json()["data"]
    assert [e["type"] for e in events] == ["call.initiated"]
    assert events[0]["sequence"] == 1
    assert events[0]["data"]["call"]["id"] == call["id"]


async def test_409_bodies(
    http: httpx.AsyncClient, silent_peer: str, database: Database, call_factory: Any
) -> None:
    call = (await http.post("/v1/calls", json={"to": silent_peer})).json()
    url = f"/v1/calls/{call['id']}"
    expected = {"state": "establishing", "allowed_actions": ["cancel", "hangup"]}
    for action in ("bye", "accept", "progress", "reject"):
        response = await http.post(f"{url}/{action}")
        assert response.status_code == 409, (action, response.text)
        assert response.headers["content-type"] == PROBLEM
        body = response.json()
        assert body["type"] == "urn:callctl:problem:invalid-state"
        assert {k: body[k] for k in expected} == expected
        assert action in body["detail"]

    canceled = await http.post(f"{url}/cancel", json={})
    assert canceled.status_code == 200
    assert canceled.json()["state"] == "terminating"
    # The CANCEL is out (no 487 will come from this peer): only hangup is left, a no-op.
    again = await http.post(f"{url}/cancel")
    assert again.status_code == 409
    assert again.json()["allowed_actions"] == ["hangup"]
    hung_up = await http.post(f"{url}/hangup")
    assert hung_up.status_code == 200
    assert hung_up.json()["state"] == "terminating"


async def test_actions_on_a_terminated_call(
    http: httpx.AsyncClient, database: Database, call_factory: Any
) -> None:
    row: Call = call_factory(
        state="terminated", end_cause="rejected", end_by="remote", end_sip_code=486
    )
    async with database.session() as session:
        await CallRepository(session).add(row)
        await session.commit()
    url = f"/v1/calls/{row.id}"
    for action in ("progress", "accept", "reject", "cancel", "bye"):
        response = await http.post(f"{url}/{action}")
        assert response.status_code == 409, action
        body = response.json()
        assert body["state"] == "terminated"
        assert body["allowed_actions"] == ["hangup"]
    hung_up = await http.post(f"{url}/hangup")
    assert hung_up.status_code == 200
    assert hung_up.json()["end"]["cause"] == "rejected"  # a no-op: nothing changed
    events = (await http.get(f"{url}/events")).json()["data"]
    assert events == []


async def test_dial_without_sip_is_503(make_settings: Callable[..., Settings]) -> None:
    application = create_app(make_settings(), sip=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/v1/calls", json=GOOD)
            ready = (await client.get("/readyz")).json()
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert [check["name"] for check in ready["checks"]] == ["database"]


async def test_readiness_includes_sip(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200
    checks = {check["name"]: check["ok"] for check in response.json()["checks"]}
    assert checks == {"database": True, "sip": True}


async def test_actions_need_the_api_key(make_settings: Callable[..., Settings]) -> None:
    application = create_app(make_settings(api_keys="k1"), sip=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            denied = await client.post("/v1/calls", json=GOOD)
            for action in ACTIONS:
                assert (await client.post(f"/v1/calls/c/{action}")).status_code == 401
            allowed = await client.post(
                "/v1/calls", json=GOOD, headers={"Authorization": "Bearer k1"}
            )
    assert denied.status_code == 401
    assert allowed.status_code == 503  # past the auth check; no SIP in this app


def test_openapi_describes_the_actions(make_settings: Callable[..., Settings]) -> None:
    document = create_app(make_settings(), sip=False).openapi()
    paths = document["paths"]
    ids = {
        ("/v1/calls", "post"): "createCall",
        **{(f"/v1/calls/{{call_id}}/{a}", "post"): f"{a}Call" for a in ACTIONS},
    }
    for (path, method), operation_id in ids.items():
        operation = paths[path][method]
        assert operation["operationId"] == operation_id
        assert operation["tags"] == ["calls"]
        if path != "/v1/calls":
            for status in ("401", "404", "409", "422"):
                assert "application/problem+json" in operation["responses"][status]["content"]
    create = paths["/v1/calls"]["post"]
    assert set(create["responses"]) >= {"200", "201", "401", "422", "503"}
    header = [p for p in create["parameters"] if p["in"] == "header"]
    assert [p["name"] for p in header] == ["Idempotency-Key"]
    schemas = document["components"]["schemas"]
    assert schemas["DialRequest"]["examples"]
    assert {"state", "allowed_actions"} <= set(schemas["InvalidStateProblem"]["required"])


async def test_concurrent_idempotent_posts_make_one_call(
    http: httpx.AsyncClient, silent_peer: str
) -> None:
    body = {"to": silent_peer}
    responses = await asyncio.gather(
        *(http.post("/v1/calls", json=body, headers={"Idempotency-Key": "same"}) for _ in range(4))
    )
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in responses}) == 1
    listed = (await http.get("/v1/calls")).json()["data"]
    assert len(listed) == 1
