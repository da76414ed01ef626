"""CallWriter on the real test database: group commit (the changes of all calls queued
since the last commit go in one transaction), in order, gap-free; retries after a database
failure (a fault injected by wrapping the session factory)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

import app.calls.writer as writer_module
from app.calls.writer import (
    CallWriter,
    Change,
    DialogView,
    Ending,
    Insert,
    SessionView,
    apply_view,
)
from app.store import bulk
from app.store.db import Database
from app.store.models import Call, CallEvent
from app.store.repositories import CallRepository, EventRepository
from app.store.resources import call_resource, event_resource
from app.webhooks.outbox import OutboxItem

T = TypeVar("T")
T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


class Wakeups:
    def __init__(self) -> None:
        self.count = 0
        self.items: list[OutboxItem] = []

    def notify(self, events: Sequence[OutboxItem] = ()) -> None:
        self.count += 1
        self.items.extend(events)


class FlakyDatabase:
    """The real database, but the first ``failures`` transactions fail to begin."""

    def __init__(self, database: Database, failures: int) -> None:
        self._database = database
        self.failures = failures

    async def transact(self, work: Callable[[Connection], T]) -> T:
        if self.failures > 0:
            self.failures -= 1
            raise OperationalError("BEGIN", {}, ConnectionError("database restarting"))
        return await self._database.transact(work)


def _view(state: str, **kw: Any) -> SessionView:
    return SessionView(at=kw.pop("at", T0), state=state, **kw)


async def _events(database: Database, call_id: str) -> list[CallEvent]:
    async with database.session() as session:
        return list((await EventRepository(session).list_for_call(call_id)).items)


async def _row(database: Database, call_id: str) -> Call:
    async with database.session() as session:
        row = await CallRepository(session).get(call_id)
    assert row is not None
    return row


@pytest.fixture
def new_row(call_factory: Callable[..., Call]) -> Callable[..., Call]:
    return call_factory


async def test_changes_commit_in_order_with_gap_free_sequences(
    database: Database, new_row: Callable[..., Call]
) -> None:
    row = new_row()
    wakeups = Wakeups()
    writer = CallWriter(row.id, database=database, notifier=wakeups, default_webhook_url=None)
    writer.start()
    writer.submit(Insert(row=row, event="call.initiated"))
    for code in range(181, 231):  # many changes queued at once, from sync callbacks
        writer.submit(
            Change(
                view=_view("establishing", last_response=(code, "x")),
                event="call.progress",
                data={"sip_code": code},
            )
        )
    writer.submit(Change(view=_view("establishing"), event=None))  # a row-only change
    await writer.flush()
    events = await _events(database, row.id)
    assert [e.sequence for e in events] == list(range(1, 52))
    assert [e.payload.get("sip_code") for e in events[1:]] == list(range(181, 231))
    # Each event shows the call as it was at its own change, not at the commit.
    assert [e.payload["call"]["last_response"]["code"] for e in events[1:]] == list(range(181, 231))
    # Everything was queued before the writer ran: one transaction, one wake-up.
    assert wakeups.count == 1
    assert {e.delivery_state for e in events} == {"skipped"}  # no webhook URL anywhere
    await writer.cancel()


async def test_the_notifier_gets_the_pending_events_as_the_outbox_holds_them(
    database: Database, new_row: Callable[..., Call]
) -> None:
    row = new_row(webhook_url="http://127.0.0.1:9/hook")
    wakeups = Wakeups()
    writer = CallWriter(row.id, database=database, notifier=wakeups, default_webhook_url=None)
    writer.start()
    writer.submit(Insert(row=row, event="call.initiated"))
    writer.submit(
        Change(view=_view("establishing", last_response=(180, "Ringing")), event="call.ringing")
    )
    await writer.flush()
    writer.submit(
        Change(
            view=_view("terminated", end=Ending(cause="remote_bye", by="remote")),
            event="call.ended",
        )
    )
    await writer.wait_finished()
    events = await _events(database, row.id)
    assert [e.delivery_state for e in events] == ["pending"] * 3
    # What the dispatcher is handed is exactly what it would read back from the outbox.
    assert [item.envelope for item in wakeups.items] == [event_resource(e) for e in events]
    assert [(i.event_id, i.sequence, i.attempts) for i in wakeups.items] == [
        (e.id, e.sequence, 0) for e in events
    ]
    assert {i.call_webhook_url for i in wakeups.items} == {"http://127.0.0.1:9/hook"}


async def test_skipped_events_are_not_handed_to_the_notifier(
    database: Database, new_row: Callable[..., Call]
) -> None:
    row = new_row()  # no webhook URL anywhere: every event is skipped
    wakeups = Wakeups()
    writer = CallWriter(row.id, database=database, notifier=wakeups, default_webhook_url=None)
    writer.start()
    writer.submit(Insert(row=row, event="call.initiated"))
    await writer.flush()
    assert wakeups.count == 1
    assert wakeups.items == []
    await writer.cancel()


async def test_the_end_is_the_last_change(database: Database, new_row: Callable[..., Call]) -> None:
    row = new_row(webhook_url="https://hooks.example.com/")
    writer = CallWriter(row.id, database=database, notifier=None, default_webhook_url=None)
    writer.start()
    writer.submit(Insert(row=row, event="call.initiated"))
    end = Ending(cause="rejected", by="remote", sip_code=486, reason="Busy Here")
    writer.submit(
        Change(
            view=_view("terminated", end=end, at=T0 + timedelta(seconds=2)),
            event="call.ended",
        )
    )
    assert writer.ended
    writer.submit(Change(view=_view("established"), event="call.answered"))  # too late
    await writer.wait_finished()
    assert writer.finished
    await writer.flush()  # returns at once once finished
    events = await _events(database, row.id)
    assert [e.type for e in events] == ["call.initiated", "call.ended"]
    assert {e.delivery_state for e in events} == {"pending"}
    stored = await _row(database, row.id)
    assert (stored.state, stored.end_cause, stored.end_sip_code) == ("terminated", "rejected", 486)
    assert stored.ended_at == T0 + timedelta(seconds=2)


async def test_a_failed_transaction_is_retried(
    database: Database, new_row: Callable[..., Call]
) -> None:
    row = new_row()
    async with database.session() as session:
        await CallRepository(session).add(row)
        await session.commit()
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    flaky = FlakyDatabase(database, failures=2)
    writer = CallWriter(
        row.id,
        database=flaky,
        notifier=None,
        default_webhook_url="https://d.example.com/",
        retry_delays=(0.1, 0.5, 2.0),
        sleep=sleep,
    )
    writer.start()
    writer.submit(Change(view=_view("establishing"), event="call.initiated"))
    await writer.flush()
    assert slept == [0.1, 0.5]
    events = await _events(database, row.id)
    assert [(e.sequence, e.type, e.delivery_state) for e in events] == [
        (1, "call.initiated", "pending")
    ]
    assert writer.dropped == 0
    await writer.cancel()


async def test_a_change_is_dropped_after_the_last_retry(
    database: Database, new_row: Callable[..., Call]
) -> None:
    row = new_row()
    async with database.session() as session:
        await CallRepository(session).add(row)
        await session.commit()

    async def sleep(delay: float) -> None:
        return None

    # The batch of both changes fails 3 times (first try + 2 retries); then each change is
    # tried alone once: the first one meets the 4th failure and is dropped.
    flaky = FlakyDatabase(database, failures=4)
    writer = CallWriter(
        row.id,
        database=flaky,
        notifier=None,
        default_webhook_url=None,
        retry_delays=(0.1, 0.2),
        sleep=sleep,
    )
    writer.start()
    writer.submit(Change(view=_view("establishing"), event="call.progress"))
    writer.submit(Change(view=_view("established"), event="call.answered"))
    await writer.flush()
    assert writer.dropped == 1
    # The next change still lands, with the next sequence number (no gap: none was taken).
    events = await _events(database, row.id)
    assert [(e.sequence, e.type) for e in events] == [(1, "call.answered")]
    await writer.cancel()


class CountingDatabase:
    """The real database, counting the sessions (transactions) opened."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self.sessions = 0

    async def transact(self, work: Callable[[Connection], T]) -> T:
        self.sessions += 1
        return await self._database.transact(work)


async def test_the_changes_of_many_calls_share_one_transaction(
    database: Database, new_row: Callable[..., Call]
) -> None:
    counting = CountingDatabase(database)
    wakeups = Wakeups()
    rows = [new_row() for _ in range(20)]
    writers = [
        CallWriter(row.id, database=counting, notifier=wakeups, default_webhook_url=None)
        for row in rows
    ]
    for writer, row in zip(writers, rows, strict=True):
        writer.start()
        writer.submit(Insert(row=row, event="call.initiated"))
        writer.submit(Change(view=_view("establishing", last_response=(180, "R")), event="x"))
        writer.submit(Change(view=_view("established"), event="call.answered"))
    await writers[-1].flush()
    assert counting.sessions == 1
    assert wakeups.count == 1
    # Later changes of calls already written: the rows are known, nothing is read first.
    for writer in writers:
        end = Ending(cause="remote_bye", by="remote")
        writer.submit(Change(view=_view("terminated", end=end), event="call.ended"))
    await asyncio.gather(*(writer.wait_finished() for writer in writers))
    assert counting.sessions == 2
    for row in rows:
        events = await _events(database, row.id)
        assert [(e.sequence, e.type) for e in events] == [
            (1, "call.initiated"),
            (2, "x"),
            (3, "call.answered"),
            (4, "call.ended"),
        ]
        # Each payload shows the call at its own change, though all were committed at once.
        shown = [(e.payload["call"]["state"], e.payload["call"]["last_response"]) for e in events]
        assert shown[:3] == [
            ("initial", None),
            ("establishing", {"code": 180, "reason": "R"}),
            ("established", {"code": 180, "reason": "R"}),
        ]
        stored = await _row(database, row.id)
        assert (stored.state, stored.end_cause, stored.version) == ("terminated", "remote_bye", 2)


async def test_a_writer_of_a_stored_call_continues_its_sequence(
    database: Database, new_row: Callable[..., Call]
) -> None:
    row = new_row()
    async with database.session() as session:
        await CallRepository(session).add(row)
        await EventRepository(session).append(call_id=row.id, type="call.initiated", payload={})
        await session.commit()
    writer = CallWriter(row.id, database=database, notifier=None, default_webhook_url=None)
    writer.start()
    end = Ending(cause="shutdown", by="system")
    writer.submit(Change(view=_view("terminated", end=end), event="call.ended"))
    await writer.wait_finished()
    events = await _events(database, row.id)
    assert [(e.sequence, e.type) for e in events] == [(1, "call.initiated"), (2, "call.ended")]
    stored = await _row(database, row.id)
    assert (stored.state, stored.version) == ("terminated", 2)


async def test_committed_call_is_what_the_database_holds_after_a_flush(
    database: Database, new_row: Callable[..., Call]
) -> None:
    row = new_row(webhook_url="https://hooks.example.com/")
    writer = CallWriter(row.id, database=database, notifier=None, default_webhook_url=None)
    writer.start()
    assert writer.committed_call() is None  # nothing flushed yet
    writer.submit(Insert(row=row, event="call.initiated"))
    writer.submit(Change(view=_view("established"), event="call.answered"))
    await writer.flush()
    shown = writer.committed_call()
    async with database.session() as session:
        stored = await CallRepository(session).get(row.id)
    assert stored is not None
    assert shown == call_resource(stored)
    assert shown is not None and shown["state"] == "established"
    writer.submit(Change(view=_view("established", last_response=(200, "OK"))))
    assert writer.committed_call() is None  # a change is queued: the view is old
    end = Ending(cause="remote_bye", by="remote")
    writer.submit(Change(view=_view("terminated", end=end), event="call.ended"))
    await writer.wait_finished()
    await writer.flush()  # returns at once: the writer has finished
    ended = writer.committed_call()
    assert ended is not None and ended["end"]["cause"] == "remote_bye"


async def test_the_unique_sequence_guards_a_second_writer(
    database: Database, new_row: Callable[..., Call]
) -> None:
    row = new_row()
    async with database.session() as session:
        await CallRepository(session).add(row)
        await EventRepository(session).append(call_id=row.id, type="call.initiated", payload={})
        await session.commit()
    # Two transactions that both computed sequence 2: the second one cannot commit.
    async with database.session() as first, database.session() as second:
        await EventRepository(first).append(call_id=row.id, type="call.progress", payload={})
        await first.commit()
        with pytest.raises(IntegrityError):
            second.add(
                CallEvent(
                    id="evt_twin",
                    call_id=row.id,
                    sequence=2,
                    type="call.progress",
                    payload={},
                    delivery_state="pending",
                    attempts=0,
                )
            )
            await second.commit()


def test_apply_view_never_moves_backwards(new_row: Callable[..., Call]) -> None:
    row = new_row(state="established", early_media=True)
    apply_view(row, _view("establishing", early_media=False, last_response=(180, "Ringing")))
    assert row.state == "established"
    assert row.early_media is True
    assert (row.last_response_code, row.last_response_reason) == (180, "Ringing")
    apply_view(
        row,
        _view(
            "established",
            dialog=DialogView(
                remote_tag="rt",
                local_cseq=3,
                remote_cseq=7,
                route_set=("<sip:p1;lr>",),
                remote_target="sip:bob@192.0.2.9",
                transport="UDP",
                peer=("192.0.2.9", 5060),
                invite_branch="z9hG4bK1",
                invite_cseq=1,
            ),
        ),
    )
    assert row.answered_at == T0
    assert (row.remote_tag, row.local_cseq, row.remote_cseq) == ("rt", 3, 7)
    assert row.route_set == ["<sip:p1;lr>"]
    assert (row.transport, row.peer_host, row.peer_port) == ("udp", "192.0.2.9", 5060)
    apply_view(row, _view("established", dialog=DialogView(local_cseq=2)))
    assert row.local_cseq == 3  # CSeq only grows (RFC 3261 §12.2.1.1)
    first_end = Ending(cause="remote_bye", by="remote")
    apply_view(row, _view("terminated", end=first_end, at=T0 + timedelta(seconds=5)))
    apply_view(row, _view("terminated", end=Ending(cause="failed", by="system")))
    assert (row.state, row.end_cause, row.end_by) == ("terminated", "remote_bye", "remote")
    assert row.ended_at == T0 + timedelta(seconds=5)


async def test_on_a_sqlite_file_the_writes_skip_sqlalchemy_s_execution(
    database: Database, new_row: Callable[..., Call]
) -> None:
    """app.store.bulk sends the rows straight to sqlite3 (what a statement would need
    SQLAlchemy for, e.g. a Python-side default left out of the rows, falls back)."""
    if database.groups is None:
        pytest.skip("the direct path is for a SQLite file (PostgreSQL runs Core statements)")
    bulk._plans.clear()
    row = new_row()
    writer = CallWriter(row.id, database=database, notifier=None, default_webhook_url=None)
    writer.start()
    writer.submit(Insert(row=row, event="call.initiated"))
    await writer.flush()
    writer.submit(Change(view=_view("established"), event="call.answered"))
    await writer.flush()
    await writer.cancel()
    planned = {statement: plan for (statement, _keys), plan in bulk._plans.items()}
    assert set(planned) == {
        writer_module._INSERT_CALL,
        writer_module._UPDATE_CALL,
        writer_module._INSERT_EVENT,
    }
    assert all(plan is not None for plan in planned.values())
    stored = await _row(database, row.id)
    assert (stored.state, stored.version) == ("established", 2)
    assert [e.type for e in await _events(database, row.id)] == ["call.initiated", "call.answered"]


def test_new_record_fills_the_defaults_insert_would_store() -> None:
    at = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
    given: dict[str, Any] = {
        "id": "c-defaults",
        "direction": "inbound",
        "from_uri": "sip:a@example.com",
        "to_uri": "sip:b@example.com",
        "local_uri": "sip:b@example.com",
        "remote_uri": "sip:a@example.com",
        "sip_call_id": "x@example.com",
        "local_tag": "t1",
        "created_at": at,
        "updated_at": at,
    }
    record = writer_module.new_record(**given)
    # What the writer makes of a mapped Call with the same values.
    assert record == writer_module._copy_row(Call(**given))
    assert (record.state, record.local_cseq, record.route_set, record.version) == (
        "initial",
        0,
        [],
        1,
    )
    assert record.end_cause is None and record.remote_tag is None
    # A default made by a function is made anew for each record.
    assert writer_module.new_record(**given).route_set is not record.route_set


async def test_a_new_record_is_inserted_like_a_mapped_row(
    database: Database, new_row: Callable[..., Call]
) -> None:
    mapped = new_row()
    fields = {
        name: getattr(mapped, name)
        for name in ("direction", "from_uri", "to_uri", "local_uri", "remote_uri", "local_tag")
    }
    record = writer_module.new_record(id="c-record", sip_call_id="r@example.com", **fields)
    writer = CallWriter(record.id, database=database, notifier=Wakeups(), default_webhook_url=None)
    writer.start()
    writer.submit(Insert(row=record, event="call.initiated"))
    await writer.flush()
    stored = await _row(database, record.id)
    assert (stored.state, stored.version, stored.route_set, stored.sip_call_id) == (
        "initial",
        1,
        [],
        "r@example.com",
    )
    assert [event.type for event in await _events(database, record.id)] == ["call.initiated"]
    await writer.cancel()
