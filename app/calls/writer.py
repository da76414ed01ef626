"""Group commit: the changes of every call go to the database together, in call order.

The UA calls its delegates synchronously, from inside the SIP event pump; a database write
cannot happen there. So the delegate takes a :class:`SessionView` (what the session looks
like at that moment) and queues it on the call's :class:`CallWriter`. The writers of one
database share one :class:`GroupWriter`: a single task that takes every change queued
since its last commit (all calls, in arrival order) and writes them in ONE transaction:
the new call rows are inserted, the changed ones updated once each with their latest
state, and the outbox events appended, each showing the call as it was at its change
(API.md: an event is committed in the same transaction as the state change that caused
it). Then the dispatcher is woken once. While a commit is in flight the next changes pile
up, so the number of transactions follows the database's speed, not the call rate.

Order and sequences: the queue is one FIFO, so a call's changes are applied in the order
they happened; each writer keeps its call row and last event sequence in memory (loaded
once, on its first change, for a call it did not insert), so sequences stay gap-free
without a ``max(sequence)`` query per event (the unique constraint on
``(call_id, sequence)`` still guards them). A failed transaction forgets those in-memory
copies and is retried whole after ``RETRY_DELAYS``; after the last retry each change of
the batch is tried alone once, so one bad change cannot sink the others, and the ones
that still fail are logged and dropped (the call goes on).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Table, bindparam, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm.exc import StaleDataError

from app.calls.rules import later_state
from app.store.bulk import executemany
from app.store.ids import new_event_id
from app.store.models import Call, CallEvent, CallRecord, CallState, DeliveryState
from app.store.resources import call_resource
from app.store.types import encode_json, utcnow
from app.webhooks.outbox import OutboxItem, item_of

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# A failed transaction (database restarting, lock timeout) is tried again after these
# delays; after the last one the change is logged and dropped, the call goes on.
RETRY_DELAYS: tuple[float, ...] = (0.05, 0.2, 1.0, 3.0)

# At most this many queued changes go into one transaction (bounds its size and the
# time the other calls wait for it); the rest go into the next one, at once.
MAX_BATCH = 1000
# Loop turns given to the flushers after their barrier (see GroupWriter._write_batch).
_FLUSHER_HEAD_START = 4


class SessionSource(Protocol):
    """Where transactions come from (``app.store.db.Database``)."""

    async def transact(self, work: Callable[[Connection], _T]) -> _T: ...


class Notifier(Protocol):
    """Wakes the webhook dispatcher after a commit that added events.

    ``events``: the pending events just committed, in commit order, so that the dispatcher
    can send them without reading them back (``WebhookDispatcher.notify``).
    """

    def notify(self, events: Sequence[OutboxItem] = ()) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Ending:
    """Why the call ended (API.md "End causes")."""

    cause: str
    by: str
    sip_code: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DialogView:
    """The dialog columns of the call row (RFC 3261 §12: enough to end it later)."""

    call_id: str | None = None
    local_tag: str | None = None
    remote_tag: str | None = None
    local_cseq: int | None = None
    remote_cseq: int | None = None
    route_set: tuple[str, ...] | None = None
    remote_target: str | None = None
    transport: str | None = None
    peer: tuple[str, int] | None = None
    invite_branch: str | None = None
    invite_cseq: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionView:
    """The session as the UA showed it when a delegate callback ran."""

    at: datetime
    state: str
    last_response: tuple[int, str] | None = None
    early_media: bool = False
    local_hold: bool | None = None  # None: the view does not know (no media session)
    remote_hold: bool | None = None
    end: Ending | None = None
    dialog: DialogView | None = None
    remote_display_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """Apply ``view`` to the row; with ``event``, also append that event."""

    view: SessionView
    event: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Insert:
    """Create the row (an inbound call, known only inside a sync callback) and its event."""

    row: Call | CallRecord  # a CallRecord (new_record) becomes the writer's own
    event: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class _Barrier:
    done: asyncio.Future[None]
    # The call as it was at the barrier's place in the queue, set while the batch is
    # built (changes queued after the barrier may share its transaction).
    shown: dict[str, Any] | None = None


# Barriers by the number of the batch's changes queued before them.
_Marks = dict[int, list[tuple["CallWriter", _Barrier]]]


_Job = Change | Insert | _Barrier


def apply_view(row: Call | CallRecord, view: SessionView) -> None:
    """Fold one view into the row; nothing ever moves backwards."""
    row.state = later_state(row.state, view.state)
    if view.last_response is not None:
        row.last_response_code, row.last_response_reason = view.last_response
    row.early_media = row.early_media or view.early_media
    if view.local_hold is not None:
        row.local_hold = view.local_hold
    if view.remote_hold is not None:
        row.remote_hold = view.remote_hold
    if view.remote_display_name is not None:
        row.remote_display_name = view.remote_display_name
    if view.state == CallState.ESTABLISHED and row.answered_at is None:
        row.answered_at = view.at
    if view.end is not None and row.end_cause is None:
        row.state = CallState.TERMINATED.value
        row.end_cause = view.end.cause
        row.end_by = view.end.by
        row.end_sip_code = view.end.sip_code
        row.end_reason = view.end.reason
        row.ended_at = view.at
    if view.dialog is not None:
        _apply_dialog(row, view.dialog)


def _apply_dialog(row: Call | CallRecord, dialog: DialogView) -> None:
    if dialog.remote_tag is not None:
        row.remote_tag = dialog.remote_tag
    if dialog.local_cseq is not None:
        row.local_cseq = max(row.local_cseq or 0, dialog.local_cseq)
    if dialog.remote_cseq is not None:
        row.remote_cseq = dialog.remote_cseq
    if dialog.route_set is not None:
        row.route_set = list(dialog.route_set)
    if dialog.remote_target is not None:
        row.remote_target = dialog.remote_target
    if dialog.transport is not None:
        row.transport = dialog.transport.lower()
    if dialog.peer is not None:
        row.peer_host, row.peer_port = dialog.peer
    if dialog.invite_branch is not None:
        row.invite_branch = dialog.invite_branch
    if dialog.invite_cseq is not None:
        row.invite_cseq = dialog.invite_cseq


# -- Core statements (the ORM unit of work costs more than the whole write on hot paths) --

_CALLS: Table = Call.__table__  # type: ignore[assignment]
_EVENTS: Table = CallEvent.__table__  # type: ignore[assignment]
_COLUMNS: tuple[str, ...] = tuple(column.key for column in _CALLS.columns)
# What a change may touch: everything but the key and what is fixed at creation.
_FIXED = frozenset({"id", "direction", "created_at", "version"})
_MUTABLE: tuple[str, ...] = tuple(name for name in _COLUMNS if name not in _FIXED)
# Optimistic locking (models.Call.version): the UPDATE only hits the version we loaded.
_UPDATE_CALL = (
    _CALLS.update()
    .where(_CALLS.c.id == bindparam("k_id"), _CALLS.c.version == bindparam("k_version"))
    .values(
        {**{name: bindparam(f"v_{name}") for name in _MUTABLE}, "version": bindparam("v_version")}
    )
)
_INSERT_CALL = _CALLS.insert()
_NULLABLE = tuple(column.key for column in _CALLS.columns if column.default is None)
_INSERT_EVENT = _EVENTS.insert()


def _column_defaults() -> list[tuple[str, Any, bool]]:
    """(column, default, callable?) for the ``calls`` columns that have a Python default."""
    return [
        (column.key, column.default.arg, column.default.is_callable)  # type: ignore[attr-defined]
        for column in _CALLS.columns
        if column.default is not None and (column.default.is_scalar or column.default.is_callable)
    ]


_DEFAULTS = _column_defaults()


def new_record(**values: Any) -> CallRecord:
    """A new call's row as a plain :class:`CallRecord`, with the column defaults filled in
    (what INSERT stores), for :class:`Insert`. Building a mapped :class:`Call` instead
    cost ~4 % of the CPU at 200 inbound calls per second (SQLAlchemy's instance state and
    attribute events), only for the writer to copy it into a CallRecord."""
    for key, default, call in _DEFAULTS:
        if values.get(key) is None:
            values[key] = default(None) if call else default
    for key in _NULLABLE:
        values.setdefault(key, None)
    return CallRecord(**values)


def _copy_row(row: Call) -> CallRecord:
    """A plain copy of a mapped ``row``, defaults filled in as :func:`new_record` does."""
    return new_record(**{name: getattr(row, name) for name in _COLUMNS})


def _row_values(row: CallRecord) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _COLUMNS}


class CallWriter:
    """Writes one call's row and events, in the order they happened (via its group)."""

    def __init__(
        self,
        call_id: str,
        *,
        database: SessionSource,
        notifier: Notifier | None,
        default_webhook_url: str | None,
        on_finished: Callable[[CallWriter], None] | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.call_id = call_id
        self._database = database
        self._notifier = notifier
        self._default_webhook_url = default_webhook_url
        self._on_finished = on_finished
        self._retry_delays = tuple(retry_delays)
        self._sleep = sleep
        self._group: GroupWriter | None = None
        self._held: list[_Job] = []  # submitted before start()
        self._done: asyncio.Future[None] | None = None
        self._ended = False
        self._events_written = 0
        self.dropped = 0
        # The committed row and last sequence (None: not known, load on the next change).
        self._row: CallRecord | None = None
        self._sequence: int | None = None
        self._shown: dict[str, Any] | None = None

    # -- feeding ---------------------------------------------------------------------

    def start(self) -> None:
        if self._group is not None:
            return
        self._done = asyncio.get_running_loop().create_future()
        self._group = GroupWriter.of(self._database, self._retry_delays, self._sleep)
        held, self._held = self._held, []
        for job in held:
            self._group.put(self, job)

    def submit(self, job: Change | Insert) -> None:
        """Queue a change (sync: callable from UA callbacks). Ignored once the call ended."""
        if self._ended:
            return
        if isinstance(job, Change) and job.view.end is not None:
            self._ended = True  # the ended event is the call's last one
        self._shown = None  # a change not yet committed: the last flush's view is old
        if self._group is None:
            self._held.append(job)
        elif not self.finished:
            self._group.put(self, job)

    def set_notifier(self, notifier: Notifier | None) -> None:
        self._notifier = notifier

    @property
    def ended(self) -> bool:
        """The ended change has been queued: nothing more will be written."""
        return self._ended

    @property
    def finished(self) -> bool:
        return self._done is not None and self._done.done()

    async def flush(self) -> dict[str, Any] | None:
        """Return once every change queued so far is committed (or dropped): the call as
        committed at that point (None: not known, read the database), also when changes
        queued since then already made :meth:`committed_call` forget it."""
        if self._group is None or self.finished:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        barrier = _Barrier(done=done)
        self._group.put(self, barrier)
        await asyncio.shield(done)
        return barrier.shown

    def committed_call(self) -> dict[str, Any] | None:
        """The call object as committed when the last :meth:`flush` returned.

        Saves reading the row back after an action (None: not known, e.g. the change was
        dropped, or no flush returned yet; read the database then).
        """
        return self._shown

    async def wait_finished(self) -> None:
        if self._done is not None:
            await asyncio.shield(self._done)

    async def cancel(self) -> None:
        """Stop: what is still queued is not written (what is being committed still is)."""
        self._shown = None
        self._finish()

    # -- called by the group ---------------------------------------------------------

    def _finish(self) -> None:
        if self._done is None or self._done.done():
            return
        self._done.set_result(None)
        if self._on_finished is not None:
            self._on_finished(self)

    def _forget(self) -> None:
        """A transaction failed: the in-memory row and sequence may be ahead of the database."""
        self._row = None
        self._sequence = None

    def _webhook_state(self, row: CallRecord) -> DeliveryState:
        url = row.webhook_url or self._default_webhook_url
        return DeliveryState.PENDING if url else DeliveryState.SKIPPED


class _Batch:
    """What one transaction writes: rows to insert, rows to update, events to append."""

    def __init__(self) -> None:
        self.inserts: dict[str, CallRecord] = {}  # call id -> row (its final state)
        self.updates: dict[str, CallRecord] = {}
        self.loaded_version: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.notifiers: list[Notifier] = []
        # Per notifier (by id): the pending events it is told about after the commit.
        self.items: dict[int, list[OutboxItem]] = {}
        self.written: list[tuple[CallWriter, Change | Insert]] = []


class GroupWriter:
    """The one task that writes the queued changes of all calls of a database."""

    # database -> {(retry delays, sleep): group}; weak, so a disposed database lets go.
    _groups: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], GroupWriter]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        database: SessionSource,
        *,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._database = database
        self._retry_delays = tuple(retry_delays)
        self._sleep = sleep
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[CallWriter, _Job]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0  # committed, for tests and benchmarks

    @classmethod
    def of(
        cls,
        database: SessionSource,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> GroupWriter:
        """The group of ``database`` on the running loop (made on first use)."""
        groups = cls._groups.setdefault(database, {})
        key = (tuple(retry_delays), sleep)
        group = groups.get(key)
        if group is None or group._loop is not asyncio.get_running_loop():
            group = groups[key] = cls(database, retry_delays=retry_delays, sleep=sleep)
        return group

    @property
    def backlog(self) -> int:
        """Changes queued and not yet taken into a transaction (a load signal)."""
        return len(self._queue)

    def put(self, writer: CallWriter, job: _Job) -> None:
        self._queue.append((writer, job))
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run(), name="call-group-writer")

    async def _run(self) -> None:
        # Runs while there is work; the next put() starts it again.
        while self._queue:
            batch: list[tuple[CallWriter, _Job]] = []
            while self._queue and len(batch) < MAX_BATCH:
                batch.append(self._queue.popleft())
            try:
                await self._write_batch(batch)
            except Exception:  # a bug must not stall every call: drop and go on
                log.exception("call writer: batch of %d change(s) lost", len(batch))
                for writer, job in batch:
                    writer._forget()
                    if isinstance(job, _Barrier) and not job.done.done():
                        job.shown = None
                        job.done.set_result(None)
                    elif isinstance(job, Change) and job.view.end is not None:
                        writer._finish()

    async def _write_batch(self, batch: list[tuple[CallWriter, _Job]]) -> None:
        jobs: list[tuple[CallWriter, Change | Insert]] = []
        marks: _Marks = {}
        for writer, job in batch:
            if isinstance(job, _Barrier):
                marks.setdefault(len(jobs), []).append((writer, job))
            elif not writer.finished:
                jobs.append((writer, job))
        if jobs:
            if await self._with_retries(jobs, marks) is None:
                # RETRY_DELAYS are spent: each change alone, once, so only bad ones drop.
                for alone in jobs:
                    if await self._attempt([alone], {}) is None:
                        alone[0].dropped += 1
                        log.error("call %s: change dropped after retries", alone[0].call_id)
        flushed = False
        for writer, job in batch:
            if isinstance(job, _Barrier):
                if not job.done.done():
                    # Committed now; a later batch may change the row before the flusher
                    # runs. Without changes in this batch, the row is what was committed;
                    # after changes, the barrier's own view (None after a failure: the
                    # flusher reads the database).
                    row = writer._row
                    if not jobs:
                        job.shown = call_resource(row) if row is not None else None
                    writer._shown = job.shown
                    job.done.set_result(None)
                    flushed = True
            elif isinstance(job, Change) and job.view.end is not None:
                row = writer._row  # the ended change is the call's last
                writer._shown = call_resource(row) if row is not None else None
                writer._finish()
        if flushed:
            # Let the flushers (a REST action about to read its call back) run before the
            # next batch takes a connection: they then read the state their flush promised,
            # not one a later change of the far end already moved on.
            for _ in range(_FLUSHER_HEAD_START):
                await asyncio.sleep(0)

    async def _with_retries(
        self, jobs: list[tuple[CallWriter, Change | Insert]], marks: _Marks
    ) -> bool | None:
        delays = iter(self._retry_delays)
        while True:
            done = await self._attempt(jobs, marks)
            if done is not None:
                return done
            delay = next(delays, None)
            if delay is None:
                return None
            await self._sleep(delay)

    async def _attempt(
        self, jobs: list[tuple[CallWriter, Change | Insert]], marks: _Marks
    ) -> bool | None:
        """One transaction for ``jobs``; None when it failed (and was rolled back)."""
        for barriers in marks.values():
            for _writer, barrier in barriers:
                barrier.shown = None
        try:
            batch = await self._commit(jobs, marks)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("call writer: transaction of %d change(s) failed: %s", len(jobs), exc)
            for writer, _job in jobs:
                writer._forget()
            for barriers in marks.values():  # their views were of rows not committed
                for _writer, barrier in barriers:
                    barrier.shown = None
            return None
        self.transactions += 1
        for writer, job in batch.written:
            if isinstance(job, Insert) or job.event is not None:
                writer._events_written += 1
        for notifier in batch.notifiers:
            notifier.notify(batch.items.get(id(notifier), ()))
        return True

    async def _commit(
        self, jobs: list[tuple[CallWriter, Change | Insert]], marks: _Marks
    ) -> _Batch:
        wanted = self._unknown(jobs)
        if wanted:
            loaded = await self._database.transact(functools.partial(_load_rows, list(wanted)))
            for call_id, (values, sequence) in loaded.items():
                writer = wanted[call_id]
                writer._row = CallRecord(**values)
                writer._sequence = sequence
        batch = _Batch()
        now = utcnow()
        for index, (writer, job) in enumerate(jobs):
            _show(marks.get(index))
            if isinstance(job, Insert):
                given = job.row
                row = given if isinstance(given, CallRecord) else _copy_row(given)
                writer._row = row
                writer._sequence = 0
                batch.inserts[row.id] = row
                batch.updates.pop(row.id, None)
                self._append(batch, writer, row, job.event, job.data, now)
                batch.written.append((writer, job))
                continue
            found = writer._row
            if found is None:
                log.error("call %s: row missing, change dropped", writer.call_id)
                continue
            apply_view(found, job.view)
            found.updated_at = now
            if found.id not in batch.inserts and found.id not in batch.updates:
                batch.updates[found.id] = found
                batch.loaded_version[found.id] = found.version
            if job.event is not None:
                self._append(batch, writer, found, job.event, job.data, now)
            batch.written.append((writer, job))
        _show(marks.get(len(jobs)))
        statements = _Statements.of(batch)
        await self._database.transact(statements.run)
        for call_id, row in batch.updates.items():
            row.version = batch.loaded_version[call_id] + 1
        return batch

    @staticmethod
    def _unknown(jobs: list[tuple[CallWriter, Change | Insert]]) -> dict[str, CallWriter]:
        """The calls this batch changes whose row and last sequence are not in memory."""
        wanted: dict[str, CallWriter] = {}
        seen: set[int] = set()
        for writer, job in jobs:
            if id(writer) in seen:
                continue
            seen.add(id(writer))
            if writer._row is None and isinstance(job, Change):
                wanted[writer.call_id] = writer
        return wanted

    @staticmethod
    def _append(
        batch: _Batch,
        writer: CallWriter,
        row: CallRecord,
        event: str,
        data: dict[str, Any],
        now: datetime,
    ) -> None:
        delivery = writer._webhook_state(row)
        writer._sequence = (writer._sequence or 0) + 1
        payload = {"call": call_resource(row), **data}
        values = {
            "id": new_event_id(),
            "call_id": row.id,
            "sequence": writer._sequence,
            "type": event,
            # The call as it is at this change (the row may change again in the batch).
            "payload": encode_json(payload),
            "created_at": now,
            "delivery_state": delivery.value,
            "attempts": 0,
            "next_attempt_at": now if delivery is DeliveryState.PENDING else None,
            "delivered_at": None,
        }
        batch.events.append(values)
        notifier = writer._notifier
        if notifier is None:
            return
        items = batch.items.get(id(notifier))
        if items is None:
            batch.notifiers.append(notifier)
            items = batch.items[id(notifier)] = []
        if delivery is DeliveryState.PENDING:
            items.append(item_of(values, webhook_url=row.webhook_url, data=payload))


def _show(barriers: list[tuple[CallWriter, _Barrier]] | None) -> None:
    """Fill in what the barriers' flushers will be shown: their call as it is now."""
    for writer, barrier in barriers or ():
        row = writer._row
        barrier.shown = call_resource(row) if row is not None else None


def _load_rows(ids: list[str], connection: Connection) -> dict[str, tuple[dict[str, Any], int]]:
    """Rows and last event sequences of ``ids`` (runs in ``Database.transact``)."""
    rows = connection.execute(select(_CALLS).where(_CALLS.c.id.in_(ids)))
    found: dict[str, dict[str, Any]] = {values["id"]: dict(values) for values in rows.mappings()}
    last = connection.execute(
        select(_EVENTS.c.call_id, func.max(_EVENTS.c.sequence))
        .where(_EVENTS.c.call_id.in_(ids))
        .group_by(_EVENTS.c.call_id)
    )
    sequences = {call_id: int(sequence) for call_id, sequence in last.all()}
    return {call_id: (values, sequences.get(call_id, 0)) for call_id, values in found.items()}


@dataclass(frozen=True, slots=True)
class _Statements:
    """A batch's parameters, built on the loop; :meth:`run` executes them (any thread)."""

    inserts: list[dict[str, Any]]
    updates: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @classmethod
    def of(cls, batch: _Batch) -> _Statements:
        updates = []
        for call_id, row in batch.updates.items():
            version = batch.loaded_version[call_id]
            values = {f"v_{name}": getattr(row, name) for name in _MUTABLE}
            values.update(k_id=call_id, k_version=version, v_version=version + 1)
            updates.append(values)
        return cls(
            inserts=[_row_values(row) for row in batch.inserts.values()],
            updates=updates,
            events=batch.events,
        )

    def run(self, connection: Connection) -> None:
        """One executemany each (rows first: events refer to them)."""
        if self.inserts:
            executemany(connection, _INSERT_CALL, self.inserts)
        if self.updates:
            changed = executemany(connection, _UPDATE_CALL, self.updates)
            if connection.dialect.supports_sane_multi_rowcount and changed != len(self.updates):
                raise StaleDataError("a call row changed under its writer")
        if self.events:
            executemany(connection, _INSERT_EVENT, self.events)
