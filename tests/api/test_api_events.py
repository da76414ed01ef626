"""POST /v1/events/{id}/redeliver and the attempt log shown by GET /v1/calls/{id}/events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from app.store.db import Database
from app.store.models import Call, CallState, DeliveryState, WebhookDelivery
from app.store.repositories import CallRepository, EventRepository
from tests.conftest import AppRunner, http_client
from tests.webhooks.receiver import Receiver


async def _failed_event(database: Database, call_factory: Callable[..., Call], url: str) -> str:
    """A finished call whose only event was given up after one 500."""
    async with database.session() as session, session.begin():
        call = call_factory(state=CallState.TERMINATED.value, webhook_url=url)
        await CallRepository(session).add(call)
        event = await EventRepository(session).append(
            call_id=call.id,
            type="call.initiated",
            payload={"call": {"id": call.id}},
            delivery_state=DeliveryState.FAILED,
        )
        event.attempts = 1
        session.add(
            WebhookDelivery(event_id=event.id, attempt=1, url=url, status_code=500, latency_ms=3)
        )
        return event.id


async def test_redeliver_sends_again_and_the_log_shows_both_attempts(
    run_app: AppRunner, database: Database, call_factory: Callable[..., Call]
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        event_id = await _failed_event(database, call_factory, receiver.url())
        async with run_app(webhook_allow_private=True) as app, http_client(app) as http:
            answer = await http.post(f"/v1/events/{event_id}/redeliver")
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            assert body["id"] == event_id
            assert body["delivery"]["history"][0]["status_code"] == 500

            await receiver.wait_for(lambda requests: any(r.acknowledged for r in requests))
            sent = json.loads(receiver.requests[-1].body)
            assert sent["id"] == event_id and sent["type"] == "call.initiated"

            # The attempt is logged once the 2xx is in; then the worker goes idle.
            await asyncio.wait_for(app.state.webhook_dispatcher.wait_idle(), timeout=10)
            page = await http.get(f"/v1/calls/{body['call_id']}/events")
            event = page.json()["data"][0]
            assert event["delivery"]["state"] == "delivered"
            history = event["delivery"]["history"]
            assert [h["attempt"] for h in history] == [1, 2]
            assert [h["status_code"] for h in history] == [500, 200]
    finally:
        await receiver.stop()


async def test_redeliver_unknown_event_is_a_404_problem(run_app: AppRunner) -> None:
    async with run_app() as app, http_client(app) as http:
        answer = await http.post("/v1/events/evt_nope/redeliver")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["event_id"] == "evt_nope"
