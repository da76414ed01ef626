"""Crash recovery: end the calls a previous process left unfinished.

One process owns the SIP port and the in-memory transactions, so a call whose row is not
terminated when the service starts belongs to a process that died (``kill -9``, OOM, power).
Its dialog state was persisted with every change (the ``calls`` dialog columns, written from
``Session.snapshot()``); from it the :class:`~app.ua.recovery.RecoveryAgent` ends the call on
the wire (BYE, CANCEL with the INVITE's branch, or a 480), and then the call's row and its
``call.ended`` event (cause ``shutdown``, by ``system``) are committed together, like any
other state change. The wire goes first: a crash between the two sends the BYE again on the
next start (answered 481, harmless) rather than leaving the far end up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from app.calls.writer import CallWriter, Change, DialogView, Ending, Notifier, SessionView
from app.store.db import Database
from app.store.models import Call, CallState, EndCause, EndedBy, EventType
from app.store.repositories import CallRepository, EventRepository
from app.store.types import utcnow
from app.ua.recovery import OrphanDialog, RecoveryAction, RecoveryOutcome
from app.ua.session import DialogSnapshot

log = logging.getLogger(__name__)

#: Orphans ended at once (each is a few datagrams and one transaction).
CONCURRENCY = 16
REASON = "the service restarted during the call"


class CallEnder(Protocol):
    """Ends one orphaned call on the wire (``app.ua.recovery.RecoveryAgent``)."""

    async def end_call(self, orphan: OrphanDialog) -> RecoveryOutcome: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveredCall:
    call_id: str
    state: str  # the state the dead process left it in
    action: RecoveryAction
    detail: str


def orphan_of(row: Call) -> OrphanDialog:
    """The dialog of a stored call, as the recovery agent needs it."""
    peer = (
        (row.peer_host, int(row.peer_port))
        if row.peer_host is not None and row.peer_port is not None
        else None
    )
    snapshot = DialogSnapshot(
        call_id=row.sip_call_id,
        local_tag=row.local_tag,
        remote_tag=row.remote_tag,
        local_cseq=row.local_cseq,
        remote_cseq=row.remote_cseq,
        route_set=tuple(row.route_set or ()),
        remote_target=row.remote_target,
        transport=row.transport or "udp",
        peer=peer,
        invite_branch=row.invite_branch,
        invite_cseq=row.invite_cseq,
    )
    headers: list[tuple[str, str]] = []
    for name, values in (row.request_headers or {}).items():
        headers.extend((name, value) for value in values)
    answered = row.state == CallState.ESTABLISHED.value or row.answered_at is not None
    return OrphanDialog(
        label=row.id,
        direction=row.direction,
        answered=answered,
        snapshot=snapshot,
        local_uri=row.local_uri,
        remote_uri=row.remote_uri,
        local_display_name=row.local_display_name,
        remote_display_name=row.remote_display_name,
        request_uri=row.request_uri,
        request_headers=tuple(headers),
    )


async def recover_calls(
    *,
    database: Database,
    notifier: Notifier | None,
    default_webhook_url: str | None,
    ender: CallEnder | None,
    skip: Collection[str] = (),
) -> list[RecoveredCall]:
    """End every unfinished call not in ``skip`` (calls of this process); what was done.

    Without an ``ender`` (no SIP) nothing is sent: the calls are only ended in the store.
    """
    async with database.session() as session:
        rows = [
            row for row in await CallRepository(session).list_unfinished() if row.id not in skip
        ]
        orphans = [(row.id, row.state, row.direction, orphan_of(row)) for row in rows]
        counts = {row.id: await EventRepository(session).last_sequence(row.id) for row in rows}
    if not orphans:
        return []
    log.info("ending %d call(s) left unfinished by a previous process", len(orphans))
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(call_id: str, state: str, direction: str, orphan: OrphanDialog) -> RecoveredCall:
        async with limit:
            if ender is not None:
                outcome = await ender.end_call(orphan)
            else:
                outcome = RecoveryOutcome(
                    action=RecoveryAction.NONE, detail="nothing sent: SIP is not running"
                )
            await _write_end(
                call_id,
                database=database,
                notifier=notifier,
                default_webhook_url=default_webhook_url,
                outcome=outcome,
                needs_initiated=counts[call_id] == 0,
            )
            log.info(
                "call %s (%s, %s) ended after restart: %s",
                call_id, direction, state, outcome.detail,
            )  # fmt: skip
            return RecoveredCall(
                call_id=call_id, state=state, action=outcome.action, detail=outcome.detail
            )

    return list(await asyncio.gather(*(one(*item) for item in orphans)))


async def _write_end(
    call_id: str,
    *,
    database: Database,
    notifier: Notifier | None,
    default_webhook_url: str | None,
    outcome: RecoveryOutcome,
    needs_initiated: bool,
) -> None:
    writer = CallWriter(
        call_id,
        database=database,
        notifier=notifier,
        default_webhook_url=default_webhook_url,
    )
    now = utcnow()
    if needs_initiated:
        # The process died between the row's insert and its first event: every call's
        # event stream starts with call.initiated (sequence 1), so write it first.
        writer.submit(
            Change(
                view=SessionView(at=now, state=CallState.INITIAL.value),
                event=EventType.INITIATED.value,
            )
        )
    end = Ending(
        cause=EndCause.SHUTDOWN.value,
        by=EndedBy.SYSTEM.value,
        reason=f"{REASON}; {outcome.detail}"[:200],
    )
    dialog = DialogView(local_cseq=outcome.local_cseq) if outcome.local_cseq else None
    writer.submit(
        Change(
            view=SessionView(at=now, state=CallState.TERMINATED.value, end=end, dialog=dialog),
            event=EventType.ENDED.value,
        )
    )
    writer.start()
    await writer.wait_finished()
