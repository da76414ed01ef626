"""CallWriter on the real test database: one transaction per change, in order, gap-free;
retries after a database failure (a fault injected by wrapping the session factory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from app.calls.writer import (
    CallWriter,
    Change,
    DialogView,
    Ending,
    Insert,
    SessionView,
    apply_view,
)
from app.store.db import Database
from app.store.models import Call, CallEvent
from app.store.repositories import CallRepository, EventRepository

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


class Wakeups:
    def __init__(self) -> None:
        self.count = 0

    def notify(self) -> None:
        self.count += 1


class FlakyDatabase:
    """The real database, but the first ``failures`` sessions fail to begin."""

    def __init__(self, database: Database, failures: int) -> None:
        self._database = database
        self.failures = failures

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        if self.failures > 0:
            self.failures -= 1
            raise OperationalError("BEGIN", {}, ConnectionError("database restarting"))
        async with self._database.session() as session:
            yield session


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
    # Each event shows the call as it was in that transaction.
    assert [e.payload["call"]["last_response"]["code"] for e in events[1:]] == list(range(181, 231))
    assert wakeups.count == 51  # one wake-up per commit that added an event
    assert {e.delivery_state for e in events} == {"skipped"}  # no webhook URL anywhere
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

    flaky = FlakyDatabase(database, failures=3)
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
