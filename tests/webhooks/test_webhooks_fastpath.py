"""The dispatcher's fast path: events handed over by ``notify(events)`` go out from memory.

The writer hands the dispatcher the pending events of each commit. A call whose first
event arrives that way is sent from memory (no outbox query per event); a retry hands the
call back to the outbox path for good. Real receiver on 127.0.0.1, the test database,
the real clock with a tiny retry schedule; waits are on what the receiver got.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.store.db import Database
from app.store.models import CallEvent, DeliveryState
from app.store.resources import event_resource
from app.webhooks import dispatcher as dispatcher_module
from app.webhooks import outbox
from app.webhooks.config import SystemClock
from app.webhooks.outbox import OutboxItem
from app.webhooks.retry import RetryPolicy
from tests.webhooks.conftest import AddCall, AddEvents, MakeDispatcher, load_attempts, load_event
from tests.webhooks.receiver import Received, Receiver, Reply
from tests.webhooks.test_webhooks_dispatcher import (
    assert_in_order_without_gaps,
    assert_signed,
    envelope,
)


def item(event: CallEvent, url: str | None) -> OutboxItem:
    """The item the writer hands over for ``event`` (what the outbox would read back)."""
    return OutboxItem(
        event_id=event.id,
        call_id=event.call_id,
        sequence=event.sequence,
        type=event.type,
        created_at=event.created_at,
        attempts=event.attempts,
        call_webhook_url=url,
        envelope=event_resource(event),
    )


@pytest.fixture
def outbox_queries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the dispatcher's due-heads queries (a spy: the real query still runs)."""
    calls: list[int] = []
    real = outbox.due_heads

    async def counting(*args: Any, **kwargs: Any) -> list[OutboxItem]:
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(dispatcher_module.outbox, "due_heads", counting)
    yield calls


def acknowledged(total: int) -> Callable[[list[Received]], bool]:
    def check(requests: list[Received]) -> bool:
        return len({envelope(r)["id"] for r in requests if r.acknowledged}) == total

    return check


async def test_handed_over_events_go_out_in_order_without_outbox_queries(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    outbox_queries: list[int],
) -> None:
    dispatcher = make_dispatcher(poll_interval=3600.0, dispatcher_kwargs={"clock": SystemClock()})
    await dispatcher.start()
    await dispatcher.wait_idle()
    before = len(outbox_queries)
    calls = [await add_call(webhook_url=receiver.url(f"/c{i}")) for i in range(3)]
    expected: dict[str, int] = {}
    for call in calls:
        first = await add_events(call, 2)
        dispatcher.notify([item(e, call.webhook_url) for e in first])
    for call in calls:  # more events while the first ones are in flight
        more = await add_events(call, 3)
        dispatcher.notify([item(e, call.webhook_url) for e in more])
        expected[call.id] = 5
    await receiver.wait_for(acknowledged(15))
    await dispatcher.wait_idle()

    assert_signed(receiver.requests)
    assert_in_order_without_gaps(receiver.requests, expected)
    assert len(receiver.requests) == 15  # each once: nothing went twice
    assert len(outbox_queries) == before  # all from memory
    for request in receiver.requests:
        stored = await load_event(database, envelope(request)["id"])
        assert stored.delivery_state == DeliveryState.DELIVERED
        assert stored.attempts == 1
    assert dispatcher.backlog == 0


async def test_a_retry_hands_the_call_back_to_the_outbox(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    outbox_queries: list[int],
) -> None:
    failed_once: set[int] = set()

    def plan(request: Received) -> Reply:
        sequence = envelope(request)["sequence"]
        if sequence == 2 and sequence not in failed_once:
            failed_once.add(sequence)
            return Reply(status=503)
        return Reply()

    receiver.plan = plan
    dispatcher = make_dispatcher(
        retry=RetryPolicy(schedule=(0.01, 0.02), jitter=0.0),
        dispatcher_kwargs={"clock": SystemClock()},
    )
    await dispatcher.start()
    await dispatcher.wait_idle()
    before = len(outbox_queries)
    call = await add_call(webhook_url=receiver.url())
    events = await add_events(call, 4)
    dispatcher.notify([item(e, call.webhook_url) for e in events])
    await receiver.wait_for(acknowledged(4))
    await dispatcher.wait_idle()

    assert_in_order_without_gaps(receiver.requests, {call.id: 4})
    assert [envelope(r)["sequence"] for r in receiver.requests] == [1, 2, 2, 3, 4]
    assert len(outbox_queries) > before  # the retry and what followed came from the outbox
    attempts = await load_attempts(database, events[1].id)
    assert [a.status_code for a in attempts] == [503, 200]
    # Handed over again after the take-over: not sent a second time.
    dispatcher.notify([item(events[3], call.webhook_url)])
    await dispatcher.wait_idle()
    assert len(receiver.requests) == 5


async def test_a_call_not_known_from_its_first_event_stays_on_the_outbox_path(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
) -> None:
    dispatcher = make_dispatcher(poll_interval=3600.0, dispatcher_kwargs={"clock": SystemClock()})
    await dispatcher.start()
    await dispatcher.wait_idle()
    call = await add_call(webhook_url=receiver.url())
    events = await add_events(call, 3)
    # Only the last one is handed over (say, the first ones predate a restart): the
    # outbox path must still send 1 and 2 first.
    dispatcher.notify([item(events[2], call.webhook_url)])
    await receiver.wait_for(acknowledged(3))
    assert [envelope(r)["sequence"] for r in receiver.requests] == [1, 2, 3]


async def test_the_answer_hook_runs_before_the_next_event_of_the_call(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    order: list[str] = []

    async def hook(event: Any, response: Any) -> None:
        # The attempt is being recorded meanwhile; the next event has not gone yet.
        order.append(f"hook {event.sequence} after {len(receiver.requests)} request(s)")

    receiver.plan = lambda request: Reply(body=b'{"ok":true}')
    dispatcher = make_dispatcher(
        poll_interval=3600.0, dispatcher_kwargs={"clock": SystemClock(), "on_response": hook}
    )
    await dispatcher.start()
    await dispatcher.wait_idle()
    call = await add_call(webhook_url=receiver.url())
    events = await add_events(call, 2)
    dispatcher.notify([item(e, call.webhook_url) for e in events])
    await receiver.wait_for(acknowledged(2))
    await dispatcher.wait_idle()
    assert order == ["hook 1 after 1 request(s)", "hook 2 after 2 request(s)"]
    for event in events:
        assert (await load_event(database, event.id)).delivery_state == DeliveryState.DELIVERED
