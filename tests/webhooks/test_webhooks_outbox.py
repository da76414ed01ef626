"""The dispatcher's outbox queries, on the test database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update

from app.store.db import Database
from app.store.models import CallEvent, DeliveryState
from app.store.types import encode_json
from app.webhooks import outbox
from tests.webhooks.conftest import AddCall, AddEvents, FakeClock


async def _set(database: Database, event_id: str, **values: object) -> None:
    async with database.session() as session:
        await session.execute(update(CallEvent).where(CallEvent.id == event_id).values(**values))
        await session.commit()


async def test_heads_are_the_earliest_pending_event_of_each_call(
    database: Database, add_call: AddCall, add_events: AddEvents, clock: FakeClock
) -> None:
    now = clock.now()
    a, b, c, d = [await add_call(webhook_url=f"http://h/{n}") for n in "abcd"]
    a1, _a2 = await add_events(a, 2)
    b1, b2 = await add_events(b, 2)
    c1, _c2 = await add_events(c, 2)
    d1, d2, d3 = await add_events(d, 3)
    await _set(database, b1.id, delivery_state=DeliveryState.DELIVERED.value)
    later = now + timedelta(seconds=30)
    await _set(database, c1.id, next_attempt_at=later)  # head in backoff: c2 waits
    await _set(database, d1.id, delivery_state=DeliveryState.FAILED.value)
    await _set(database, d2.id, delivery_state=DeliveryState.SKIPPED.value)

    async with database.session() as session:
        heads = await outbox.due_heads(session, now=now, limit=10)
        held = await outbox.due_heads(session, now=now, limit=10, exclude_calls=[a.id, d.id])
        first = await outbox.next_due(session)
        without_c = await outbox.next_due(session, exclude_calls=[a.id, b.id, c.id, d.id])
    assert sorted(h.event_id for h in heads) == sorted([a1.id, b2.id, d3.id])
    assert [h.event_id for h in held] == [b2.id]
    by_id = {h.event_id: h for h in heads}
    assert by_id[a1.id].call_webhook_url == "http://h/a"
    assert by_id[b2.id].envelope["sequence"] == 2
    assert by_id[b2.id].envelope["call_id"] == b.id
    assert first == now
    assert without_c is None

    async with database.session() as session:
        assert await outbox.next_due(session, exclude_calls=[a.id, b.id, d.id]) == later
        assert await outbox.due_heads(
            session, now=later, limit=10, exclude_calls=[a.id, b.id, d.id]
        )


async def test_a_redelivered_old_event_is_sent_before_the_calls_next_one(
    database: Database, add_call: AddCall, add_events: AddEvents, clock: FakeClock
) -> None:
    call = await add_call(webhook_url="http://h/x")
    e1, e2, e3 = await add_events(call, 3)
    for event in (e1, e2):
        await _set(database, event.id, delivery_state=DeliveryState.DELIVERED.value)
    async with database.session() as session, session.begin():
        requeued = await outbox.requeue(session, event_id=e1.id, now=clock.now())
        assert await outbox.requeue(session, event_id="evt_nope", now=clock.now()) is None
    assert requeued is not None and requeued.call_id == call.id
    async with database.session() as session:
        heads = await outbox.due_heads(session, now=clock.now(), limit=10)
    # Both e1 (requeued) and e3 are heads now; one per call goes, the lower first.
    assert [h.event_id for h in heads] == [e1.id]
    await _set(database, e1.id, delivery_state=DeliveryState.DELIVERED.value)
    async with database.session() as session:
        heads = await outbox.due_heads(session, now=clock.now(), limit=10)
    assert [h.event_id for h in heads] == [e3.id]


async def test_gone_urls_follow_the_latest_answer_of_each_url(
    database: Database, add_call: AddCall, add_events: AddEvents, clock: FakeClock
) -> None:
    call = await add_call(webhook_url="http://h/x")
    (event,) = await add_events(call, 1)
    t: datetime = clock.now()

    def row(url: str, attempt: int, status: int | None) -> outbox.DeliveryRow:
        return outbox.DeliveryRow(
            event_id=event.id,
            attempt=attempt,
            url=url,
            status_code=status,
            latency_ms=1,
            error=None if status else "ConnectError",
            response_excerpt=None,
            attempted_at=t,
        )

    async with database.session() as session, session.begin():
        await outbox.write_outcomes(
            session,
            deliveries=[
                row("http://gone/", 1, 410),
                row("http://back/", 2, 410),
                row("http://back/", 3, 200),
                row("http://gone-then-down/", 4, 410),
                row("http://gone-then-down/", 5, None),  # no answer: says nothing new
                row("http://flaky/", 6, 500),
            ],
            updates=[],
        )
    async with database.session() as session:
        assert await outbox.gone_urls(session) == {"http://gone/", "http://gone-then-down/"}
        assert await outbox.pending_count(session) == 1
        assert [a.attempt for a in await outbox.attempts_of(session, event.id)] == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]


def test_the_body_around_an_encoded_payload_is_the_envelope_encoded_whole() -> None:
    payload = {"call": {"id": "call_1", "to": "sip:ü@example.com", "n": [1, 2.5, None]}}
    values = {
        "id": "evt_1",
        "call_id": "call_1",
        "sequence": 7,
        "type": "call.answered",
        "created_at": datetime(2026, 12, 4, 15, 0, 1, 123456, tzinfo=UTC),
        "attempts": 0,
        "payload": encode_json(payload),
    }
    fast = outbox.item_of(values, webhook_url=None, data=payload)
    slow = outbox.item_of({**values, "payload": payload}, webhook_url=None)
    assert fast.data_json is not None and slow.data_json is None
    assert fast.envelope == slow.envelope
    body = outbox.envelope_body(fast)
    assert body == outbox.envelope_body(slow)
    assert json.loads(body) == {
        "id": "evt_1",
        "type": "call.answered",
        "created_at": "2026-12-04T15:00:01.123456Z",
        "call_id": "call_1",
        "sequence": 7,
        "data": payload,
    }
    assert "ü".encode() in body  # UTF-8 as is, not \u escapes


async def test_an_encoded_payload_is_stored_once_and_reads_back_as_json(
    database: Database, add_call: AddCall
) -> None:
    call_id = (await add_call()).id
    payload = {"call": {"id": call_id, "state": "answered", "tags": ["a", "ü"]}}
    now = datetime(2026, 12, 4, tzinfo=UTC)
    row = {
        "id": "evt_encoded",
        "call_id": call_id,
        "sequence": 1,
        "type": "call.answered",
        "payload": encode_json(payload),
        "created_at": now,
        "delivery_state": DeliveryState.DELIVERED.value,
        "attempts": 0,
        "next_attempt_at": None,
        "delivered_at": now,
    }
    await database.transact(lambda connection: connection.execute(insert(CallEvent), [row]))
    async with database.session() as session:
        stored = await session.get(CallEvent, "evt_encoded")
        assert stored is not None
        # Not a JSON string holding JSON: the object itself.
        assert stored.payload == payload
