"""Repositories: queries and writes on one session. They flush, never commit.

The caller (``app.calls``) owns the transaction, so a state change and the event it
causes land in one commit.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.ids import new_event_id
from app.store.models import (
    Call,
    CallEvent,
    CallState,
    DeliveryState,
    IdempotencyKey,
    WebhookDelivery,
)
from app.store.types import utcnow

T = TypeVar("T")

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50


class InvalidCursorError(ValueError):
    """A pagination cursor that this service did not make (or that was altered)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventSlice:
    items: Sequence[CallEvent]
    has_more: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCursor:
    """Position after which the next page of the newest-first call list starts."""

    created_at: datetime
    call_id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.call_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> CallCursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            created_at, call_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
            moment = datetime.fromisoformat(created_at)
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise InvalidCursorError("not a cursor returned by this API") from None
        if not isinstance(call_id, str) or moment.tzinfo is None:
            raise InvalidCursorError("not a cursor returned by this API")
        return cls(created_at=moment, call_id=call_id)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE}")


class CallRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, call: Call) -> Call:
        self._session.add(call)
        await self._session.flush()
        return call

    async def get(self, call_id: str) -> Call | None:
        return await self._session.get(Call, call_id)

    async def find_by_dialog(self, *, sip_call_id: str, local_tag: str) -> Call | None:
        """The call owning a dialog, by Call-ID and our tag (RFC 3261 §12)."""
        result = await self._session.execute(
            select(Call).where(Call.sip_call_id == sip_call_id, Call.local_tag == local_tag)
        )
        return result.scalars().first()

    async def list_unfinished(self) -> Sequence[Call]:
        """Calls not yet terminated, oldest first (to end them after a restart)."""
        result = await self._session.execute(
            select(Call)
            .where(Call.state != CallState.TERMINATED.value)
            .order_by(Call.created_at, Call.id)
        )
        return result.scalars().all()

    async def list_page(
        self,
        *,
        state: str | None = None,
        direction: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Call]:
        """Newest first; ``cursor`` is the ``next_cursor`` of the page before."""
        _check_limit(limit)
        query = select(Call)
        if state is not None:
            query = query.where(Call.state == state)
        if direction is not None:
            query = query.where(Call.direction == direction)
        if cursor is not None:
            after = CallCursor.decode(cursor)
            query = query.where(
                or_(
                    Call.created_at < after.created_at,
                    and_(Call.created_at == after.created_at, Call.id < after.call_id),
                )
            )
        query = query.order_by(Call.created_at.desc(), Call.id.desc()).limit(limit + 1)
        rows = (await self._session.execute(query)).scalars().all()
        items = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = CallCursor(created_at=last.created_at, call_id=last.id).encode()
        return Page(items=items, next_cursor=next_cursor)


class EventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def last_sequence(self, call_id: str) -> int:
        result = await self._session.execute(
            select(func.coalesce(func.max(CallEvent.sequence), 0)).where(
                CallEvent.call_id == call_id
            )
        )
        return int(result.scalar_one())

    async def append(
        self,
        *,
        call_id: str,
        type: str,
        payload: dict[str, Any],
        created_at: datetime | None = None,
        delivery_state: DeliveryState = DeliveryState.PENDING,
    ) -> CallEvent:
        """Write the call's next event (sequence = last + 1, no gaps).

        One writer per call is expected (the call service); the unique constraint on
        (call_id, sequence) turns a lost race into an IntegrityError, never a gap or a twin.
        """
        moment = created_at or utcnow()
        event = CallEvent(
            id=new_event_id(),
            call_id=call_id,
            sequence=await self.last_sequence(call_id) + 1,
            type=type,
            payload=payload,
            created_at=moment,
            delivery_state=delivery_state.value,
            attempts=0,
            next_attempt_at=moment if delivery_state is DeliveryState.PENDING else None,
        )
        self._session.add(event)
        await self._session.flush()
        return event

    async def list_for_call(
        self, call_id: str, *, after: int = 0, limit: int = MAX_PAGE_SIZE
    ) -> EventSlice:
        """Events of one call with sequence > ``after``, in sequence order."""
        _check_limit(limit)
        result = await self._session.execute(
            select(CallEvent)
            .where(CallEvent.call_id == call_id, CallEvent.sequence > after)
            .order_by(CallEvent.sequence)
            .limit(limit + 1)
        )
        rows = result.scalars().all()
        return EventSlice(items=rows[:limit], has_more=len(rows) > limit)

    async def get(self, event_id: str) -> CallEvent | None:
        return await self._session.get(CallEvent, event_id)


class DeliveryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(
        self,
        *,
        event_id: str,
        attempt: int,
        url: str,
        status_code: int | None,
        latency_ms: int | None,
        error: str | None = None,
        response_excerpt: str | None = None,
        attempted_at: datetime | None = None,
    ) -> WebhookDelivery:
        delivery = WebhookDelivery(
            event_id=event_id,
            attempt=attempt,
            url=url,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error,
            response_excerpt=response_excerpt,
            attempted_at=attempted_at or utcnow(),
        )
        self._session.add(delivery)
        await self._session.flush()
        return delivery

    async def list_for_events(self, event_ids: Sequence[str]) -> dict[str, list[WebhookDelivery]]:
        """The attempt logs of several events in one query, oldest attempt first."""
        out: dict[str, list[WebhookDelivery]] = {event_id: [] for event_id in event_ids}
        if not event_ids:
            return out
        result = await self._session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id.in_(event_ids))
            .order_by(WebhookDelivery.event_id, WebhookDelivery.attempt, WebhookDelivery.id)
        )
        for row in result.scalars():
            out[row.event_id].append(row)
        return out

    async def list_for_event(self, event_id: str) -> Sequence[WebhookDelivery]:
        result = await self._session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id == event_id)
            .order_by(WebhookDelivery.attempt, WebhookDelivery.id)
        )
        return result.scalars().all()


class IdempotencyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, key: str) -> IdempotencyKey | None:
        return await self._session.get(IdempotencyKey, key)

    async def add(
        self, *, key: str, request_hash: str, call_id: str, created_at: datetime | None = None
    ) -> IdempotencyKey:
        row = IdempotencyKey(
            key=key, request_hash=request_hash, call_id=call_id, created_at=created_at or utcnow()
        )
        self._session.add(row)
        await self._session.flush()
        return row
