"""Fixtures of the webhook tests: a fake clock, the loopback receiver, outbox rows."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.store.db import Database
from app.store.models import Call, CallEvent, WebhookDelivery
from app.store.repositories import CallRepository, EventRepository
from app.webhooks.config import WebhookConfig
from app.webhooks.dispatcher import WebhookDispatcher
from app.webhooks.retry import RetryPolicy
from app.webhooks.signing import parse_secrets
from tests.webhooks.receiver import Receiver

# Two secrets: a key rotation in progress, both signatures are sent.
SECRET_OLD = "whsec_" + base64.b64encode(b"old-key-0123456789abcdef").decode()
SECRET_NEW = "whsec_" + base64.b64encode(b"new-key-fedcba9876543210").decode()
SECRETS = (SECRET_OLD, SECRET_NEW)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The HTTP transport's tests run on uvloop too: production runs on it."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if item.path.name == "test_http11.py":
        import uvloop

        factories["uvloop"] = uvloop.new_event_loop
    return factories


class FakeClock:
    """Wall-clock time that moves only when the test says so."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        assert moment >= self._now, "time does not go backwards"
        self._now = moment

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    # Near the real time, so that standardwebhooks' 5-minute tolerance accepts signatures.
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


MakeDispatcher = Callable[..., WebhookDispatcher]


@pytest.fixture
async def make_dispatcher(database: Database, clock: FakeClock) -> AsyncIterator[MakeDispatcher]:
    """Dispatchers on this test's database, stopped at the end of the test.

    Keyword arguments go to :class:`WebhookConfig`, except ``dispatcher_kwargs`` (a dict
    for the dispatcher itself). Defaults: loopback allowed, both test secrets, a short
    timeout, the fake clock and a seeded RNG.
    """
    made: list[WebhookDispatcher] = []

    def make(**overrides: Any) -> WebhookDispatcher:
        extra: dict[str, Any] = overrides.pop("dispatcher_kwargs", {})
        values: dict[str, Any] = {
            "allow_private": True,
            "keys": parse_secrets(SECRETS),
            "timeout": 5.0,
            "retry": RetryPolicy(schedule=(1.0, 5.0, 30.0)),
        }
        values.update(overrides)
        extra.setdefault("clock", clock)
        extra.setdefault("rng", random.Random(1234))
        dispatcher = WebhookDispatcher(database.sessionmaker, WebhookConfig(**values), **extra)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        await dispatcher.stop()


AddCall = Callable[..., Awaitable[Call]]


@pytest.fixture
def add_call(database: Database, call_factory: Callable[..., Call]) -> AddCall:
    async def add(**overrides: Any) -> Call:
        async with database.session() as session:
            call = await CallRepository(session).add(call_factory(**overrides))
            await session.commit()
        return call

    return add


AddEvents = Callable[..., Awaitable[list[CallEvent]]]


@pytest.fixture
def add_events(database: Database, clock: FakeClock) -> AddEvents:
    """``add_events(call, n)``: n more events of the call, committed, created at the clock."""

    async def add(call: Call, count: int, *, type: str = "call.progress") -> list[CallEvent]:
        events: list[CallEvent] = []
        async with database.session() as session:
            repository = EventRepository(session)
            for _ in range(count):
                sequence = await repository.last_sequence(call.id) + 1
                payload = {"call": {"id": call.id, "state": "establishing"}, "n": sequence}
                events.append(
                    await repository.append(
                        call_id=call.id, type=type, payload=payload, created_at=clock.now()
                    )
                )
            await session.commit()
        return events

    return add


async def load_event(database: Database, event_id: str) -> CallEvent:
    async with database.session() as session:
        event = await session.get(CallEvent, event_id)
        assert event is not None
        return event


async def load_attempts(database: Database, event_id: str) -> list[WebhookDelivery]:
    async with database.session() as session:
        rows = await session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id == event_id)
            .order_by(WebhookDelivery.attempt)
        )
        return list(rows.scalars().all())


async def settle_all(dispatcher: WebhookDispatcher, clock: FakeClock, max_steps: int = 500) -> int:
    """Run passes, stepping the fake clock to each next due time, until nothing is pending."""
    passes = 0
    for _ in range(max_steps):
        await dispatcher.run_due()
        passes += 1
        due = await dispatcher.next_due()
        if due is None:
            return passes
        if due > clock.now():
            clock.set(due)
    raise AssertionError(f"still pending after {max_steps} passes")
