"""One writer task per call: each change of the session becomes one committed transaction.

The UA calls its delegates synchronously, from inside the SIP event pump; a database write
cannot happen there. So the delegate takes a :class:`SessionView` (what the session looks
like at that moment) and queues it here; the call's writer task applies the views in
arrival order, one transaction each: the call row is updated and, when the change is an
event, the outbox row is inserted with the next sequence number, then the transaction is
committed and the webhook dispatcher is woken. One writer per call keeps the events of a
call in order and their sequence numbers gap-free (the unique constraint on
``(call_id, sequence)`` guards it anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.calls.rules import later_state
from app.store.models import Call, CallState, DeliveryState
from app.store.repositories import CallRepository, EventRepository
from app.store.resources import call_resource

log = logging.getLogger(__name__)

# A failed transaction (database restarting, lock timeout) is tried again after these
# delays; after the last one the change is logged and dropped, the call goes on.
RETRY_DELAYS: tuple[float, ...] = (0.05, 0.2, 1.0, 3.0)


class SessionSource(Protocol):
    """Where transactions come from (``app.store.db.Database``)."""

    def session(self) -> AbstractAsyncContextManager[AsyncSession]: ...


class Notifier(Protocol):
    """Wakes the webhook dispatcher after a commit that added events."""

    def notify(self) -> None: ...


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

    row: Call
    event: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Barrier:
    done: asyncio.Future[None]


_Job = Change | Insert | _Barrier


def apply_view(row: Call, view: SessionView) -> None:
    """Fold one view into the row; nothing ever moves backwards."""
    row.state = later_state(row.state, view.state)
    if view.last_response is not None:
        row.last_response_code, row.last_response_reason = view.last_response
    row.early_media = row.early_media or view.early_media
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


def _apply_dialog(row: Call, dialog: DialogView) -> None:
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


class CallWriter:
    """The one task that writes a call's row and events, in the order they happened."""

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
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self._events_written = 0
        self.dropped = 0

    # -- feeding ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"call-writer-{self.call_id}"
            )

    def submit(self, job: Change | Insert) -> None:
        """Queue a change (sync: callable from UA callbacks). Ignored once the call ended."""
        if self._ended:
            return
        if isinstance(job, Change) and job.view.end is not None:
            self._ended = True  # the ended event is the call's last one
        self._queue.put_nowait(job)

    def set_notifier(self, notifier: Notifier | None) -> None:
        self._notifier = notifier

    @property
    def ended(self) -> bool:
        """The ended change has been queued: nothing more will be written."""
        return self._ended

    @property
    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    async def flush(self) -> None:
        """Return once every change queued so far is committed (or dropped)."""
        if self._task is None or self._task.done():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Barrier(done=done))
        await asyncio.shield(done)

    async def wait_finished(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the task --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                job = await self._queue.get()
                if isinstance(job, _Barrier):
                    if not job.done.done():
                        job.done.set_result(None)
                    continue
                await self._write_with_retries(job)
                if isinstance(job, Change) and job.view.end is not None:
                    break
        finally:
            # Barriers queued behind the end (or left by a cancel) must not hang anyone.
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if isinstance(job, _Barrier) and not job.done.done():
                    job.done.set_result(None)
            if self._on_finished is not None:
                self._on_finished(self)

    async def _write_with_retries(self, job: Change | Insert) -> None:
        delays = iter(self._retry_delays)
        while True:
            try:
                wrote_event = await self._write(job)
            except (SQLAlchemyError, OSError) as exc:
                delay = next(delays, None)
                if delay is None:
                    self.dropped += 1
                    log.error(
                        "call %s: change dropped after retries (%s: %s)",
                        self.call_id, type(exc).__name__, exc,
                    )  # fmt: skip
                    return
                log.warning("call %s: write failed, retrying: %s", self.call_id, exc)
                await self._sleep(delay)
                continue
            if wrote_event and self._notifier is not None:
                self._notifier.notify()
            return

    async def _write(self, job: Change | Insert) -> bool:
        """One transaction; True when it added an event."""
        async with self._database.session() as session, session.begin():
            if isinstance(job, Insert):
                row = job.row
                await CallRepository(session).add(row)
                await self._append(session, row, job.event, job.data)
                return True
            found = await CallRepository(session).get(self.call_id)
            if found is None:
                log.error("call %s: row missing, change dropped", self.call_id)
                return False
            apply_view(found, job.view)
            if job.event is None:
                return False
            await self._append(session, found, job.event, job.data)
            return True

    async def _append(
        self, session: AsyncSession, row: Call, event: str, data: dict[str, Any]
    ) -> None:
        url = row.webhook_url or self._default_webhook_url
        delivery = DeliveryState.PENDING if url else DeliveryState.SKIPPED
        await session.flush()  # the resource shows the row as updated (updated_at, version)
        await EventRepository(session).append(
            call_id=row.id,
            type=event,
            payload={"call": call_resource(row), **data},
            delivery_state=delivery,
        )
        self._events_written += 1
