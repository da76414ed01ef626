"""Repositories on a real database (SQLite, or PostgreSQL with CALLCTL_TEST_DATABASE_URL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from app.store.db import Database
from app.store.models import Call, CallEvent, CallState, DeliveryState, WebhookDelivery
from app.store.repositories import (
    MAX_PAGE_SIZE,
    CallCursor,
    CallRepository,
    DeliveryRepository,
    EventRepository,
    IdempotencyRepository,
    InvalidCursorError,
)

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CallFactory = Callable[..., Call]


async def _add_calls(database: Database, calls: list[Call]) -> None:
    async with database.session() as session:
        repository = CallRepository(session)
        for call in calls:
            await repository.add(call)
        await session.commit()


async def _walk(database: Database, **filters: object) -> list[list[str]]:
    """Every page of the listing, as lists of ids."""
    pages: list[list[str]] = []
    cursor: str | None = None
    async with database.session() as session:
        repository = CallRepository(session)
        while True:
            page = await repository.list_page(cursor=cursor, **filters)  # type: ignore[arg-type]
            pages.append([call.id for call in page.items])
            if page.next_cursor is None:
                return pages
            cursor = page.next_cursor


# -- calls -----------------------------------------------------------------------------------


async def test_add_flushes_without_committing(
    database: Database, call_factory: CallFactory
) -> None:
    async with database.session() as session:
        call = await CallRepository(session).add(call_factory(id="call_a"))
        assert call.version == 1  # flushed: defaults applied by the INSERT
        assert session.in_transaction()
        await session.rollback()
    async with database.session() as session:
        assert await CallRepository(session).get("call_a") is None


async def test_get_returns_the_stored_call(database: Database, call_factory: CallFactory) -> None:
    await _add_calls(database, [call_factory(id="call_b", client_state="cs-1")])
    async with database.session() as session:
        call = await CallRepository(session).get("call_b")
        missing = await CallRepository(session).get("call_nope")
    assert call is not None
    assert call.client_state == "cs-1"
    assert call.state == CallState.INITIAL
    assert call.early_media is False
    assert call.route_set == []
    assert missing is None


async def test_find_by_dialog_uses_call_id_and_local_tag(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(
        database,
        [
            call_factory(id="call_x1", sip_call_id="abc@h", local_tag="t1"),
            call_factory(id="call_x2", sip_call_id="abc@h", local_tag="t2"),
        ],
    )
    async with database.session() as session:
        repository = CallRepository(session)
        found = await repository.find_by_dialog(sip_call_id="abc@h", local_tag="t2")
        none = await repository.find_by_dialog(sip_call_id="abc@h", local_tag="t3")
    assert found is not None
    assert found.id == "call_x2"
    assert none is None


async def test_list_unfinished_skips_terminated_calls(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(
        database,
        [
            call_factory(id="call_u1", state="established", created_at=BASE),
            call_factory(id="call_u2", state="terminated", created_at=BASE),
            call_factory(id="call_u3", state="initial", created_at=BASE + timedelta(seconds=1)),
        ],
    )
    async with database.session() as session:
        unfinished = await CallRepository(session).list_unfinished()
    assert [call.id for call in unfinished] == ["call_u1", "call_u3"]


async def test_concurrent_update_of_one_call_raises_stale_data(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(database, [call_factory(id="call_v")])
    async with database.session() as first, database.session() as second:
        mine = await CallRepository(first).get("call_v")
        theirs = await CallRepository(second).get("call_v")
        assert mine is not None
        assert theirs is not None
        mine.state = "establishing"
        await first.commit()
        theirs.state = "terminated"
        with pytest.raises(StaleDataError):
            await second.commit()
    async with database.session() as session:
        stored = await CallRepository(session).get("call_v")
    assert stored is not None
    assert (stored.state, stored.version) == ("establishing", 2)


async def test_check_constraints_refuse_unknown_states(
    database: Database, call_factory: CallFactory
) -> None:
    async with database.session() as session:
        with pytest.raises(IntegrityError):
            await CallRepository(session).add(call_factory(state="ringing"))


# -- pagination ------------------------------------------------------------------------------


async def test_pages_walk_every_call_newest_first_without_overlap(
    database: Database, call_factory: CallFactory
) -> None:
    calls = [
        call_factory(id=f"call_p{i:02d}", created_at=BASE + timedelta(seconds=i)) for i in range(7)
    ]
    await _add_calls(database, calls)
    pages = await _walk(database, limit=3)
    assert pages == [
        ["call_p06", "call_p05", "call_p04"],
        ["call_p03", "call_p02", "call_p01"],
        ["call_p00"],
    ]


async def test_equal_timestamps_are_ordered_by_id_across_pages(
    database: Database, call_factory: CallFactory
) -> None:
    ids = ["call_a", "call_b", "call_c", "call_d", "call_e"]
    await _add_calls(database, [call_factory(id=i, created_at=BASE) for i in ids])
    pages = await _walk(database, limit=2)
    assert pages == [["call_e", "call_d"], ["call_c", "call_b"], ["call_a"]]


async def test_exact_multiple_of_the_page_size_ends_with_null_cursor(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(
        database,
        [call_factory(id=f"call_m{i}", created_at=BASE + timedelta(seconds=i)) for i in range(4)],
    )
    pages = await _walk(database, limit=2)
    assert pages == [["call_m3", "call_m2"], ["call_m1", "call_m0"]]


async def test_filters_apply_to_every_page(database: Database, call_factory: CallFactory) -> None:
    calls = []
    for i in range(10):
        calls.append(
            call_factory(
                id=f"call_f{i}",
                created_at=BASE + timedelta(seconds=i),
                direction="inbound" if i % 2 else "outbound",
                state="terminated" if i % 3 == 0 else "established",
            )
        )
    await _add_calls(database, calls)
    inbound = await _walk(database, limit=2, direction="inbound")
    assert inbound == [["call_f9", "call_f7"], ["call_f5", "call_f3"], ["call_f1"]]
    terminated_outbound = await _walk(
        database, limit=5, direction="outbound", state="terminated"
    )
    assert terminated_outbound == [["call_f6", "call_f0"]]


async def test_empty_table_gives_one_empty_page(database: Database) -> None:
    assert await _walk(database) == [[]]


@pytest.mark.parametrize("limit", [0, MAX_PAGE_SIZE + 1])
async def test_limit_out_of_range_is_refused(database: Database, limit: int) -> None:
    async with database.session() as session:
        with pytest.raises(ValueError, match="limit"):
            await CallRepository(session).list_page(limit=limit)


@pytest.mark.parametrize(
    "cursor", ["", "!!!", "bm90IGpzb24", "WzEsMl0", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwieCJd"]
)
async def test_foreign_cursors_are_refused(database: Database, cursor: str) -> None:
    async with database.session() as session:
        with pytest.raises(InvalidCursorError):
            await CallRepository(session).list_page(cursor=cursor)


def test_cursor_round_trip_is_url_safe() -> None:
    cursor = CallCursor(created_at=BASE, call_id="call_Zz-_9")
    token = cursor.encode()
    assert token.replace("-", "").replace("_", "").isalnum()
    assert CallCursor.decode(token) == cursor


# -- events ----------------------------------------------------------------------------------


async def test_events_get_gapless_sequences_per_call(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(database, [call_factory(id="call_e1"), call_factory(id="call_e2")])
    async with database.session() as session:
        events = EventRepository(session)
        first = await events.append(call_id="call_e1", type="call.initiated", payload={"n": 1})
        other = await events.append(call_id="call_e2", type="call.initiated", payload={})
        second = await events.append(call_id="call_e1", type="call.progress", payload={"n": 2})
        await session.commit()
    assert (first.sequence, second.sequence, other.sequence) == (1, 2, 1)
    assert first.id.startswith("evt_")
    assert first.delivery_state == DeliveryState.PENDING
    assert first.next_attempt_at is not None


async def test_listing_events_after_a_sequence(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(database, [call_factory(id="call_l")])
    async with database.session() as session:
        events = EventRepository(session)
        for n in range(5):
            await events.append(call_id="call_l", type="call.progress", payload={"n": n})
        await session.commit()
    async with database.session() as session:
        events = EventRepository(session)
        everything = await events.list_for_call("call_l")
        tail = await events.list_for_call("call_l", after=3)
        head = await events.list_for_call("call_l", limit=2)
    assert [e.sequence for e in everything.items] == [1, 2, 3, 4, 5]
    assert everything.has_more is False
    assert [e.sequence for e in tail.items] == [4, 5]
    assert [e.payload for e in tail.items] == [{"n": 3}, {"n": 4}]
    assert [e.sequence for e in head.items] == [1, 2]
    assert head.has_more is True


async def test_duplicate_sequence_is_an_integrity_error(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(database, [call_factory(id="call_d")])
    async with database.session() as session:
        await EventRepository(session).append(call_id="call_d", type="call.initiated", payload={})
        session.add(
            CallEvent(
                id="evt_twin",
                call_id="call_d",
                sequence=1,
                type="call.progress",
                payload={},
                created_at=BASE,
            )
        )
        with pytest.raises(IntegrityError):
            await session.flush()


async def test_event_for_unknown_call_violates_the_foreign_key(database: Database) -> None:
    async with database.session() as session:
        with pytest.raises(IntegrityError):
            await EventRepository(session).append(
                call_id="call_ghost", type="call.initiated", payload={}
            )


async def test_skipped_events_have_no_next_attempt(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(database, [call_factory(id="call_s")])
    async with database.session() as session:
        event = await EventRepository(session).append(
            call_id="call_s",
            type="call.initiated",
            payload={},
            delivery_state=DeliveryState.SKIPPED,
        )
    assert event.delivery_state == "skipped"
    assert event.next_attempt_at is None


# -- deliveries and idempotency --------------------------------------------------------------


async def test_delivery_attempts_are_recorded_per_event(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(database, [call_factory(id="call_w")])
    async with database.session() as session:
        event = await EventRepository(session).append(
            call_id="call_w", type="call.initiated", payload={}
        )
        deliveries = DeliveryRepository(session)
        await deliveries.record(
            event_id=event.id,
            attempt=1,
            url="https://hooks.example.com/x",
            status_code=None,
            latency_ms=10000,
            error="timeout",
        )
        await deliveries.record(
            event_id=event.id,
            attempt=2,
            url="https://hooks.example.com/x",
            status_code=204,
            latency_ms=35,
            response_excerpt="",
        )
        await session.commit()
        attempts = await deliveries.list_for_event(event.id)
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [
        (1, None, "timeout"),
        (2, 204, None),
    ]
    assert all(a.attempted_at.tzinfo is not None for a in attempts)


async def test_deleting_a_call_cascades_to_its_events_and_attempts(
    database: Database, call_factory: CallFactory
) -> None:
    await _add_calls(database, [call_factory(id="call_del")])
    async with database.session() as session:
        event = await EventRepository(session).append(
            call_id="call_del", type="call.initiated", payload={}
        )
        await DeliveryRepository(session).record(
            event_id=event.id, attempt=1, url="http://h/", status_code=200, latency_ms=1
        )
        await IdempotencyRepository(session).add(key="k-del", request_hash="h", call_id="call_del")
        await session.commit()
    async with database.session() as session:
        call = await CallRepository(session).get("call_del")
        await session.delete(call)
        await session.commit()
        counts = [
            (await session.execute(select(func.count()).select_from(model))).scalar_one()
            for model in (CallEvent, WebhookDelivery)
        ]
        key = await IdempotencyRepository(session).get("k-del")
    assert counts == [0, 0]
    assert key is None


async def test_idempotency_keys_are_unique(database: Database, call_factory: CallFactory) -> None:
    await _add_calls(database, [call_factory(id="call_i")])
    async with database.session() as session:
        stored = await IdempotencyRepository(session).add(
            key="abc", request_hash="h1", call_id="call_i"
        )
        await session.commit()
    assert stored.created_at.tzinfo is not None
    async with database.session() as session:
        keys = IdempotencyRepository(session)
        found = await keys.get("abc")
        assert found is not None
        assert (found.request_hash, found.call_id) == ("h1", "call_i")
    async with database.session() as session:
        with pytest.raises(IntegrityError):
            await IdempotencyRepository(session).add(
                key="abc", request_hash="h2", call_id="call_i"
            )
