"""GET /v1/calls, /v1/calls/{id} and /v1/calls/{id}/events read what the store holds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.store.db import Database
from app.store.models import Call, DeliveryState
from app.store.repositories import CallRepository, EventRepository
from app.store.types import utcnow

BASE = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
CallFactory = Callable[..., Call]


async def _store(database: Database, *calls: Call) -> None:
    async with database.session() as session:
        for call in calls:
            await CallRepository(session).add(call)
        await session.commit()


async def _pages(client: httpx.AsyncClient, query: str) -> list[list[str]]:
    pages: list[list[str]] = []
    url = f"/v1/calls?{query}"
    while True:
        response = await client.get(url)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"data", "next_cursor"}
        pages.append([call["id"] for call in body["data"]])
        if body["next_cursor"] is None:
            return pages
        url = f"/v1/calls?{query}&cursor={body['next_cursor']}"


async def test_call_object_has_every_field_of_the_contract(
    client: httpx.AsyncClient, database: Database, call_factory: CallFactory
) -> None:
    call = call_factory(
        id="call_full",
        state="terminated",
        from_uri="sip:alice@example.com",
        to_uri="sip:bob@example.com",
        local_display_name="Alice",
        remote_display_name="Bob",
        sip_call_id="cid@192.0.2.1",
        local_tag="lt",
        remote_tag="rt",
        last_response_code=486,
        last_response_reason="Busy Here",
        end_cause="rejected",
        end_sip_code=486,
        end_reason="Busy Here",
        end_by="remote",
        client_state="order-1",
        webhook_url="https://hooks.example.com/c",
        created_at=BASE,
        ended_at=BASE + timedelta(seconds=3),
    )
    await _store(database, call)
    response = await client.get("/v1/calls/call_full")
    assert response.status_code == 200
    assert response.json() == {
        "id": "call_full",
        "direction": "outbound",
        "state": "terminated",
        "from": "sip:alice@example.com",
        "to": "sip:bob@example.com",
        "local_identity": {"uri": "sip:alice@example.com", "display_name": "Alice"},
        "remote_identity": {"uri": call.remote_uri, "display_name": "Bob"},
        "sip": {"call_id": "cid@192.0.2.1", "local_tag": "lt", "remote_tag": "rt"},
        "last_response": {"code": 486, "reason": "Busy Here"},
        "early_media": False,
        "hold": {"local": False, "remote": False},
        "end": {"cause": "rejected", "sip_code": 486, "reason": "Busy Here", "by": "remote"},
        "client_state": "order-1",
        "webhook_url": "https://hooks.example.com/c",
        "created_at": "2026-05-04T03:02:01.123456Z",
        "answered_at": None,
        "ended_at": "2026-05-04T03:02:04.123456Z",
        "request": None,
        "auto_provisional": None,
    }


async def test_inbound_calls_carry_the_request_and_auto_provisional(
    client: httpx.AsyncClient, database: Database, call_factory: CallFactory
) -> None:
    call = call_factory(
        id="call_in",
        direction="inbound",
        request_uri="sip:svc@127.0.0.1:5060",
        request_headers={"X-Tenant": ["a", "b"], "Subject": ["hi"]},
        request_body="v=0\r\n",
        request_content_type="application/sdp",
        auto_provisional=False,
    )
    await _store(database, call)
    body = (await client.get("/v1/calls/call_in")).json()
    assert body["direction"] == "inbound"
    assert body["request"] == {
        "uri": "sip:svc@127.0.0.1:5060",
        "headers": {"X-Tenant": ["a", "b"], "Subject": ["hi"]},
        "body": "v=0\r\n",
        "content_type": "application/sdp",
    }
    assert body["auto_provisional"] is False


async def test_pagination_walks_every_call_once_newest_first(
    client: httpx.AsyncClient, database: Database, call_factory: CallFactory
) -> None:
    calls = [
        call_factory(id=f"call_{i:03d}", created_at=BASE + timedelta(milliseconds=i))
        for i in range(23)
    ]
    await _store(database, *calls)
    pages = await _pages(client, "limit=10")
    assert [len(page) for page in pages] == [10, 10, 3]
    flat = [call_id for page in pages for call_id in page]
    assert flat == [f"call_{i:03d}" for i in reversed(range(23))]


async def test_default_page_size_is_50(
    client: httpx.AsyncClient, database: Database, call_factory: CallFactory
) -> None:
    await _store(
        database,
        *(call_factory(created_at=BASE + timedelta(seconds=i)) for i in range(51)),
    )
    body = (await client.get("/v1/calls")).json()
    assert len(body["data"]) == 50
    assert body["next_cursor"] is not None


async def test_filters_by_state_and_direction(
    client: httpx.AsyncClient, database: Database, call_factory: CallFactory
) -> None:
    await _store(
        database,
        call_factory(id="call_o_est", state="established", created_at=BASE),
        call_factory(
            id="call_i_est",
            direction="inbound",
            state="established",
            created_at=BASE + timedelta(seconds=1),
        ),
        call_factory(
            id="call_i_ter",
            direction="inbound",
            state="terminated",
            created_at=BASE + timedelta(seconds=2),
        ),
    )
    assert await _pages(client, "state=established") == [["call_i_est", "call_o_est"]]
    assert await _pages(client, "direction=inbound") == [["call_i_ter", "call_i_est"]]
    assert await _pages(client, "direction=inbound&state=established&limit=1") == [
        ["call_i_est"]
    ]
    assert await _pages(client, "state=initial") == [[]]


async def test_events_in_sequence_with_delivery_status(
    client: httpx.AsyncClient, database: Database, call_factory: CallFactory
) -> None:
    await _store(database, call_factory(id="call_ev"))
    delivered_at = utcnow()
    async with database.session() as session:
        events = EventRepository(session)
        first = await events.append(
            call_id="call_ev", type="call.initiated", payload={"call": {"id": "call_ev"}}
        )
        first.delivery_state = DeliveryState.DELIVERED.value
        first.attempts = 1
        first.next_attempt_at = None
        first.delivered_at = delivered_at
        await events.append(
            call_id="call_ev",
            type="call.progress",
            payload={"call": {"id": "call_ev"}, "sip_code": 180},
        )
        await session.commit()

    response = await client.get("/v1/calls/call_ev/events")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["has_more"] is False
    assert [e["sequence"] for e in body["data"]] == [1, 2]
    one, two = body["data"]
    assert one["id"] == first.id
    assert one["type"] == "call.initiated"
    assert one["call_id"] == "call_ev"
    assert one["data"] == {"call": {"id": "call_ev"}}
    assert one["delivery"]["state"] == "delivered"
    assert one["delivery"]["attempts"] == 1
    assert one["delivery"]["delivered_at"].endswith("Z")
    assert two["data"]["sip_code"] == 180
    assert two["delivery"]["state"] == "pending"
    assert two["delivery"]["attempts"] == 0

    replay = (await client.get("/v1/calls/call_ev/events?after=1")).json()
    assert [e["sequence"] for e in replay["data"]] == [2]
    page = (await client.get("/v1/calls/call_ev/events?limit=1")).json()
    assert [e["sequence"] for e in page["data"]] == [1]
    assert page["has_more"] is True


async def test_events_of_an_unknown_call_are_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/calls/call_nobody/events")
    assert response.status_code == 404
    assert response.json()["type"] == "urn:callctl:problem:call-not-found"
