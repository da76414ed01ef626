"""The dispatcher's queries on the outbox (``call_events``) and the attempt log.

Like the store's repositories these work on a session the caller owns and never commit;
they only use the store's models. Each dispatcher step is its own short transaction.

The head of a call is a pending event whose predecessor (sequence - 1) is not pending.
Sequences have no gaps, so that is the call's earliest pending event: every event before
it was delivered, given up or skipped. Only heads are sent, one per call at a time, which
is what keeps delivery in order per call (API.md, Webhooks). The predecessor test is one
lookup in the (call_id, sequence) unique index, so finding heads stays linear in the
backlog even when statistics are stale (a "no earlier pending event" anti-join turned
quadratic on PostgreSQL with a 20 000-event backlog). One difference: after a redelivery
of an old event, the call also has a second head (the event after its last delivered
one); the two may go in either order, never at the same time.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

import orjson
from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from app.store.bulk import executemany
from app.store.models import Base, Call, CallEvent, DeliveryState, WebhookDelivery
from app.store.resources import event_resource, rfc3339
from app.store.types import EncodedJSON

_PENDING = DeliveryState.PENDING.value
_EVENTS = Base.metadata.tables[CallEvent.__tablename__]
_DELIVERIES = Base.metadata.tables[WebhookDelivery.__tablename__]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxItem:
    """One event due for an attempt, with everything needed to send it."""

    event_id: str
    call_id: str
    sequence: int
    type: str
    created_at: datetime
    attempts: int
    call_webhook_url: str | None
    envelope: dict[str, Any]  # the webhook JSON body (API.md, Webhooks)
    # ``envelope["data"]`` as JSON text when the writer encoded it already (None: encode).
    data_json: str | None = None


def item_of(
    values: Mapping[str, Any], *, webhook_url: str | None, data: dict[str, Any] | None = None
) -> OutboxItem:
    """The item of an event row just written (``call_events`` column values).

    ``data``: the payload as a dict when ``values["payload"]`` holds its encoded text.
    """
    payload = values["payload"]
    encoded = isinstance(payload, EncodedJSON)
    return OutboxItem(
        event_id=values["id"],
        call_id=values["call_id"],
        sequence=values["sequence"],
        type=values["type"],
        created_at=values["created_at"],
        attempts=values["attempts"],
        call_webhook_url=webhook_url,
        envelope={
            "id": values["id"],
            "type": values["type"],
            "created_at": rfc3339(values["created_at"]),
            "call_id": values["call_id"],
            "sequence": values["sequence"],
            "data": data if data is not None else payload,
        },
        data_json=payload if encoded else None,
    )


def envelope_body(item: OutboxItem) -> bytes:
    """The webhook body: ``item.envelope`` as compact JSON, UTF-8 kept as is.

    With the payload's text already encoded by the writer, the envelope is put together
    around it (the same bytes as encoding the whole envelope, which is what happens
    otherwise).
    """
    if item.data_json is None:
        return json.dumps(item.envelope, separators=(",", ":"), ensure_ascii=False).encode()
    envelope = item.envelope
    head = orjson.dumps({key: envelope[key] for key in _ENVELOPE_HEAD})
    return b'%b,"data":%b}' % (head[:-1], item.data_json.encode())


# The envelope's fields before "data", in their order (API.md, Webhooks).
_ENVELOPE_HEAD = ("id", "type", "created_at", "call_id", "sequence")


def _head_join() -> tuple[Any, ColumnElement[bool], ColumnElement[bool]]:
    """The predecessor alias, its join condition, and "is a head" given the join."""
    previous = aliased(CallEvent)
    on = and_(previous.call_id == CallEvent.call_id, previous.sequence == CallEvent.sequence - 1)
    is_head = or_(previous.id.is_(None), previous.delivery_state != _PENDING)
    return previous, on, is_head


def _due(now: datetime) -> ColumnElement[bool]:
    # A pending row without a time (written by hand) counts as due at once.
    return or_(CallEvent.next_attempt_at.is_(None), CallEvent.next_attempt_at <= now)


async def due_heads(
    session: AsyncSession,
    *,
    now: datetime,
    limit: int,
    exclude_calls: Collection[str] = (),
) -> list[OutboxItem]:
    """Up to ``limit`` call heads due at ``now``, most overdue first; one per call."""
    previous, on, is_head = _head_join()
    query = (
        select(CallEvent, Call.webhook_url)
        .join(Call, Call.id == CallEvent.call_id)
        .outerjoin(previous, on)
        .where(CallEvent.delivery_state == _PENDING, _due(now), is_head)
        .order_by(CallEvent.next_attempt_at)
        .limit(limit)
    )
    if exclude_calls:
        query = query.where(CallEvent.call_id.not_in(list(exclude_calls)))
    rows = (await session.execute(query)).all()
    lowest: dict[str, tuple[CallEvent, str | None]] = {}
    for event, webhook_url in rows:
        kept = lowest.get(event.call_id)
        if kept is None or event.sequence < kept[0].sequence:
            lowest[event.call_id] = (event, webhook_url)
    return [
        OutboxItem(
            event_id=event.id,
            call_id=event.call_id,
            sequence=event.sequence,
            type=event.type,
            created_at=event.created_at,
            attempts=event.attempts,
            call_webhook_url=webhook_url,
            envelope=event_resource(event),
        )
        for event, webhook_url in lowest.values()
    ]


async def next_due(
    session: AsyncSession, *, exclude_calls: Collection[str] = ()
) -> datetime | None:
    """The earliest ``next_attempt_at`` among call heads (None: nothing is scheduled).

    Non-head events are left out: they may be due but cannot go before their head.
    (A pending head without a time is due at once; :func:`due_heads` finds it.)
    """
    previous, on, is_head = _head_join()
    query = (
        select(CallEvent.next_attempt_at)
        .outerjoin(previous, on)
        .where(
            CallEvent.delivery_state == _PENDING,
            CallEvent.next_attempt_at.is_not(None),
            is_head,
        )
        .order_by(CallEvent.next_attempt_at)
        .limit(1)
    )
    if exclude_calls:
        query = query.where(CallEvent.call_id.not_in(list(exclude_calls)))
    value: datetime | None = (await session.execute(query)).scalar_one_or_none()
    return value


class DeliveryRow(TypedDict):
    """One row of ``webhook_deliveries``: an HTTP attempt (or a refused one)."""

    event_id: str
    attempt: int
    url: str
    status_code: int | None
    latency_ms: int | None
    error: str | None
    response_excerpt: str | None
    attempted_at: datetime


class EventUpdate(TypedDict):
    """An event's delivery columns after an attempt or a decision."""

    id: str
    attempts: int
    delivery_state: str
    next_attempt_at: datetime | None
    delivered_at: datetime | None


async def write_outcomes(
    session: AsyncSession,
    *,
    deliveries: Sequence[DeliveryRow],
    updates: Sequence[EventUpdate],
) -> None:
    """Insert attempt rows and update events (by primary key), in the caller's transaction."""
    # Core statements with executemany: no ORM unit of work for rows nobody holds.
    if deliveries:
        await session.execute(_INSERT_DELIVERY, list(deliveries))
    if updates:
        await session.execute(_UPDATE_OUTCOME, [{**u, "event_id": u["id"]} for u in updates])


_INSERT_DELIVERY = insert(_DELIVERIES)
_UPDATE_OUTCOME = (
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(
        attempts=bindparam("attempts"),
        delivery_state=bindparam("delivery_state"),
        next_attempt_at=bindparam("next_attempt_at"),
        delivered_at=bindparam("delivered_at"),
    )
)


def write_outcomes_sync(
    connection: Connection,
    *,
    deliveries: Sequence[DeliveryRow],
    updates: Sequence[EventUpdate],
) -> None:
    """:func:`write_outcomes` on a synchronous connection (``Database.transact``)."""
    if deliveries:
        executemany(connection, _INSERT_DELIVERY, deliveries)
    if updates:
        executemany(connection, _UPDATE_OUTCOME, [{**u, "event_id": u["id"]} for u in updates])


@dataclass(frozen=True, slots=True, kw_only=True)
class Requeued:
    event_id: str
    call_id: str
    call_webhook_url: str | None


async def requeue(session: AsyncSession, *, event_id: str, now: datetime) -> Requeued | None:
    """Make one event pending again, due at ``now``; attempts are kept. None: no such event.

    Whatever the event's state (delivered, failed, skipped or already pending), it
    becomes its call's head again if it is the earliest pending one; later pending
    events of the call wait behind it, as always.
    """
    row = (
        await session.execute(
            select(CallEvent.id, CallEvent.call_id, Call.webhook_url)
            .join(Call, Call.id == CallEvent.call_id)
            .where(CallEvent.id == event_id)
        )
    ).first()
    if row is None:
        return None
    await session.execute(
        update(CallEvent)
        .where(CallEvent.id == event_id)
        .values(delivery_state=_PENDING, next_attempt_at=now, delivered_at=None)
    )
    return Requeued(event_id=row[0], call_id=row[1], call_webhook_url=row[2])


async def gone_urls(session: AsyncSession) -> set[str]:
    """URLs whose latest answer was 410 Gone: nothing more is sent to them.

    Derived from the attempt log, so the decision survives a restart and is undone by a
    later successful attempt (a redelivery the user asked for).
    """
    latest = (
        select(func.max(WebhookDelivery.id))
        .where(WebhookDelivery.status_code.is_not(None))
        .group_by(WebhookDelivery.url)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(WebhookDelivery.url).where(
            WebhookDelivery.id.in_(latest), WebhookDelivery.status_code == 410
        )
    )
    return set(rows.scalars().all())


async def pending_count(session: AsyncSession) -> int:
    """How many events wait for delivery (for drain reports and metrics)."""
    value = await session.execute(
        select(func.count()).select_from(CallEvent).where(CallEvent.delivery_state == _PENDING)
    )
    return int(value.scalar_one())


async def attempts_of(session: AsyncSession, event_id: str) -> Sequence[WebhookDelivery]:
    """The attempt log of one event, oldest first."""
    result = await session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.event_id == event_id)
        .order_by(WebhookDelivery.attempt, WebhookDelivery.id)
    )
    return result.scalars().all()
