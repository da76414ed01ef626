"""/v1/calls: read endpoints. The actions (dial, accept, bye, ...) come with the call service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from app.api.auth import require_api_key
from app.api.deps import SessionDep
from app.api.responses import INVALID, NOT_FOUND, UNAUTHORIZED
from app.api.schemas import (
    Call,
    CallEvent,
    CallEventList,
    CallList,
    CallStateName,
    DirectionName,
    EventDelivery,
)
from app.errors import CallNotFoundError, InvalidRequestError
from app.store.models import CallEvent as CallEventRow
from app.store.repositories import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    CallRepository,
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


def _event(row: CallEventRow) -> CallEvent:
    envelope = event_resource(row)
    return CallEvent.model_validate(
        {
            **envelope,
            "delivery": EventDelivery(
                state=row.delivery_state,  # CHECK-constrained to the Literal values
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
                delivered_at=row.delivered_at,
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
    return CallEventList(data=[_event(row) for row in events.items], has_more=events.has_more)
