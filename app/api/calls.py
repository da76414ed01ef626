"""/v1/calls: read endpoints. The actions (dial, accept, bye, ...) come with the call service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import require_api_key
from app.api.deps import SessionDep
from app.api.responses import EVENT_NOT_FOUND, INVALID, NOT_FOUND, UNAUTHORIZED, UNAVAILABLE
from app.api.schemas import (
    Call,
    CallEvent,
    CallEventList,
    CallList,
    CallStateName,
    DeliveryAttempt,
    DirectionName,
    EventDelivery,
)
from app.errors import (
    CallNotFoundError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from app.store.models import CallEvent as CallEventRow
from app.store.models import WebhookDelivery
from app.store.repositories import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    CallRepository,
    DeliveryRepository,
    EventRepository,
    InvalidCursorError,
)
from app.store.resources import call_resource, event_resource

router = APIRouter(
    prefix="/v1",
    tags=["calls"],
    dependencies=[Depends(require_api_key)],
    responses=UNAUTHORIZED,
)

CallIdPath = Annotated[
    str,
    Path(
        description="The call's id.",
        examples=["call_3q2-Vb8kTnS0c1mXo4eRZA"],
        min_length=1,
        max_length=64,
    ),
]
DEFAULT_EVENT_PAGE = 100


def _attempt(row: WebhookDelivery) -> DeliveryAttempt:
    return DeliveryAttempt(
        attempt=row.attempt,
        url=row.url,
        status_code=row.status_code,
        latency_ms=row.latency_ms,
        error=row.error,
        response_excerpt=row.response_excerpt,
        attempted_at=row.attempted_at,
    )


async def _history(
    session: AsyncSession, event_ids: Sequence[str]
) -> dict[str, list[DeliveryAttempt]]:
    logs = await DeliveryRepository(session).list_for_events(event_ids)
    return {event_id: [_attempt(row) for row in rows] for event_id, rows in logs.items()}


def _event(row: CallEventRow, history: list[DeliveryAttempt] | None = None) -> CallEvent:
    envelope = event_resource(row)
    return CallEvent.model_validate(
        {
            **envelope,
            "delivery": EventDelivery(
                state=row.delivery_state,  # CHECK-constrained to the Literal values
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
                delivered_at=row.delivered_at,
                history=history or [],
            ),
        }
    )


@router.get(
    "/calls",
    operation_id="listCalls",
    summary="List calls",
    description=(
        "Calls, newest first, optionally filtered by state and direction. Pages are "
        "linked by an opaque cursor: pass `next_cursor` back as `cursor` until it is null."
    ),
    response_model=CallList,
    responses=INVALID,
)
async def list_calls(
    session: SessionDep,
    state: Annotated[CallStateName | None, Query(description="Only calls in this state.")] = None,
    direction: Annotated[
        DirectionName | None, Query(description="Only calls of this direction.")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None,
        Query(description="`next_cursor` of the previous page.", max_length=512),
    ] = None,
) -> CallList:
    try:
        page = await CallRepository(session).list_page(
            state=state, direction=direction, limit=limit, cursor=cursor
        )
    except InvalidCursorError as exc:
        issue = {"loc": ["query", "cursor"], "msg": str(exc), "type": "invalid_cursor"}
        raise InvalidRequestError(f"query.cursor: {exc}", errors=[issue]) from None
    return CallList(
        data=[Call.model_validate(call_resource(call)) for call in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/calls/{call_id}",
    operation_id="getCall",
    summary="Get a call",
    response_model=Call,
    responses={**NOT_FOUND, **INVALID},
)
async def get_call(session: SessionDep, call_id: CallIdPath) -> Call:
    call = await CallRepository(session).get(call_id)
    if call is None:
        raise CallNotFoundError(call_id)
    return Call.model_validate(call_resource(call))


@router.get(
    "/calls/{call_id}/events",
    operation_id="listCallEvents",
    summary="List a call's events",
    description=(
        "The call's events in sequence order, each with its webhook delivery status. "
        "`after=N` returns only events with sequence > N (replay after an outage)."
    ),
    response_model=CallEventList,
    responses={**NOT_FOUND, **INVALID},
)
async def list_call_events(
    session: SessionDep,
    call_id: CallIdPath,
    after: Annotated[
        int, Query(ge=0, description="Only events with a greater sequence number.")
    ] = 0,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")
    ] = DEFAULT_EVENT_PAGE,
) -> CallEventList:
    if await CallRepository(session).get(call_id) is None:
        raise CallNotFoundError(call_id)
    events = await EventRepository(session).list_for_call(call_id, after=after, limit=limit)
    history = await _history(session, [row.id for row in events.items])
    return CallEventList(
        data=[_event(row, history[row.id]) for row in events.items], has_more=events.has_more
    )


EventIdPath = Annotated[
    str,
    Path(
        description="The event's id.",
        examples=["evt_Q1u6m0oW0nq2n5xH2d3x9A"],
        min_length=1,
        max_length=64,
    ),
]


@router.post(
    "/events/{event_id}/redeliver",
    operation_id="redeliverEvent",
    tags=["events"],
    summary="Deliver an event again",
    description=(
        "Queues the event for delivery again (due now, its attempt log kept), for example "
        "after it was given up while the receiver was down. Also lifts a 410 Gone decision "
        "for its URL. Delivery order per call still holds."
    ),
    response_model=CallEvent,
    responses={**EVENT_NOT_FOUND, **UNAVAILABLE},
)
async def redeliver_event(request: Request, event_id: EventIdPath) -> CallEvent:
    dispatcher = getattr(request.app.state, "webhook_dispatcher", None)
    database = getattr(request.app.state, "database", None)
    if dispatcher is None or database is None:
        raise ServiceUnavailableError("webhook delivery is not running")
    if not await dispatcher.redeliver(event_id):
        raise NotFoundError(f"no event with id {event_id!r}", extensions={"event_id": event_id})
    async with database.session() as session:
        row = await EventRepository(session).get(event_id)
        if row is None:  # deleted with its call in the meantime
            raise NotFoundError(f"no event with id {event_id!r}", extensions={"event_id": event_id})
        history = await _history(session, [event_id])
        return _event(row, history[event_id])
