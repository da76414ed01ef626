"""The outbox dispatcher against a real HTTP receiver on 127.0.0.1 and the test database.

Retries are driven with ``run_due()`` and a fake clock; the worker tests use the real
clock with a tiny schedule and wait on what the receiver got (bounded), never on time.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from app.settings import Settings
from app.store.db import Database
from app.store.models import DeliveryState
from app.webhooks.config import SystemClock, WebhookConfig
from app.webhooks.dispatcher import WebhookEvent, WebhookResponse, excerpt
from app.webhooks.http11 import Http11Transport
from app.webhooks.retry import RetryPolicy
from app.webhooks.signing import parse_secrets
from app.webhooks.urls import IPAddress, check_webhook_url
from tests.webhooks.conftest import (
    SECRETS,
    AddCall,
    AddEvents,
    FakeClock,
    MakeDispatcher,
    load_attempts,
    load_event,
    settle_all,
)
from tests.webhooks.receiver import Behaviour, Close, Hang, Received, Receiver, Reply

# -- checks on what the receiver got --------------------------------------------------------


def envelope(request: Received) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(request.body)
    return body


def assert_signed(requests: Iterable[Received]) -> None:
    """Every request verifies with each of the rotated secrets (standardwebhooks)."""
    for request in requests:
        for secret in SECRETS:
            Webhook(secret).verify(request.body, request.headers)
        assert request.headers["webhook-id"] == envelope(request)["id"]
        assert request.headers["content-type"] == "application/json"


def assert_in_order_without_gaps(requests: list[Received], expected: dict[str, int]) -> None:
    """Per call: acknowledged sequences are 1..n (repeats allowed, gaps not), and no
    request for event k arrived before event k-1 had been acknowledged."""
    for call_id, count in expected.items():
        mine = [r for r in requests if envelope(r)["call_id"] == call_id]
        acknowledged: set[int] = set()
        for request in mine:
            sequence = envelope(request)["sequence"]
            missing = [s for s in range(1, sequence) if s not in acknowledged]
            assert not missing, f"{call_id}: event {sequence} sent before {missing} got a 2xx"
            if request.acknowledged:
                acknowledged.add(sequence)
        firsts = list(dict.fromkeys(envelope(r)["sequence"] for r in mine if r.acknowledged))
        assert firsts == list(range(1, count + 1)), f"{call_id}: {firsts}"


def attempts_by_event(requests: Iterable[Received]) -> Counter[str]:
    return Counter(envelope(r)["id"] for r in requests)


# -- the happy path and the envelope ----------------------------------------------------------


async def test_events_arrive_signed_with_the_api_envelope(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    clock: FakeClock,
) -> None:
    call = await add_call(webhook_url=receiver.url("/mine"))
    (event,) = await add_events(call, 1, type="call.answered")
    dispatcher = make_dispatcher(default_url=receiver.url("/default"))

    assert await dispatcher.run_due() == 1

    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.path == "/mine"  # the call's URL wins over the default
    assert_signed([request])
    assert envelope(request) == {
        "id": event.id,
        "type": "call.answered",
        "created_at": clock.now().isoformat().replace("+00:00", "Z"),
        "call_id": call.id,
        "sequence": 1,
        "data": {"call": {"id": call.id, "state": "establishing"}, "n": 1},
    }
    assert request.headers["webhook-timestamp"] == str(int(clock.now().timestamp()))
    stored = await load_event(database, event.id)
    assert stored.delivery_state == DeliveryState.DELIVERED
    assert stored.attempts == 1
    assert stored.delivered_at == clock.now()
    assert stored.next_attempt_at is None
    (attempt,) = await load_attempts(database, event.id)
    assert attempt.attempt == 1
    assert attempt.url == receiver.url("/mine")
    assert attempt.status_code == 200
    assert attempt.error is None
    assert attempt.latency_ms is not None and attempt.latency_ms >= 0
    assert dispatcher.stats.delivered == 1


async def test_the_default_url_serves_calls_without_their_own(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
) -> None:
    call = await add_call(webhook_url=None)
    await add_events(call, 2)
    dispatcher = make_dispatcher(default_url=receiver.url("/default"))
    await dispatcher.run_due()
    assert [r.path for r in receiver.requests] == ["/default", "/default"]
    assert [envelope(r)["sequence"] for r in receiver.requests] == [1, 2]


async def test_without_any_url_events_are_skipped(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    call = await add_call(webhook_url=None)
    events = await add_events(call, 3)
    dispatcher = make_dispatcher(default_url=None)
    assert await dispatcher.run_due() == 3
    assert receiver.requests == []
    for event in events:
        stored = await load_event(database, event.id)
        assert stored.delivery_state == DeliveryState.SKIPPED
        assert stored.attempts == 0
        assert await load_attempts(database, event.id) == []
    assert await dispatcher.next_due() is None
    assert dispatcher.stats.skipped == 3


# -- retries on the schedule (fake clock) ------------------------------------------------------


async def test_retries_follow_the_schedule_then_the_event_is_given_up_and_the_next_goes(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    clock: FakeClock,
) -> None:
    import random

    schedule = (1.0, 5.0, 30.0)
    call = await add_call(webhook_url=receiver.url())
    first, second = await add_events(call, 2)
    receiver.plan = lambda r: (
        Reply(status=500, body=b"boom") if envelope(r)["sequence"] == 1 else Reply()
    )
    dispatcher = make_dispatcher(
        retry=RetryPolicy(schedule=schedule, jitter=0.2),
        dispatcher_kwargs={"rng": random.Random(99)},
    )
    replay = random.Random(99)  # the same draws as the dispatcher's RNG
    attempt_times = [clock.now()]

    await dispatcher.run_due()
    for number, base in enumerate(schedule, start=1):
        stored = await load_event(database, first.id)
        assert stored.delivery_state == DeliveryState.PENDING
        assert stored.attempts == number
        expected = attempt_times[-1] + timedelta(seconds=base * replay.uniform(0.8, 1.2))
        assert stored.next_attempt_at is not None
        assert abs(stored.next_attempt_at - expected) <= timedelta(microseconds=1)
        assert base * 0.8 <= (stored.next_attempt_at - attempt_times[-1]).total_seconds()
        assert (stored.next_attempt_at - attempt_times[-1]).total_seconds() <= base * 1.2
        assert await dispatcher.next_due() == stored.next_attempt_at
        # Just before it is due, nothing happens; the second event waits behind the first.
        clock.set(stored.next_attempt_at - timedelta(milliseconds=1))
        assert await dispatcher.run_due() == 0
        assert len(receiver.requests) == number
        clock.set(stored.next_attempt_at)
        attempt_times.append(clock.now())
        await dispatcher.run_due()

    # Attempt len(schedule) + 1 failed too: given up; the next event of the call went.
    stored = await load_event(database, first.id)
    assert stored.delivery_state == DeliveryState.FAILED
    assert stored.attempts == len(schedule) + 1
    assert stored.next_attempt_at is None
    assert (await load_event(database, second.id)).delivery_state == DeliveryState.DELIVERED
    assert [envelope(r)["sequence"] for r in receiver.requests] == [1, 1, 1, 1, 2]
    log = await load_attempts(database, first.id)
    assert [a.attempt for a in log] == [1, 2, 3, 4]
    assert [a.status_code for a in log] == [500] * 4
    assert [a.response_excerpt for a in log] == ["boom"] * 4
    assert [a.attempted_at for a in log] == attempt_times
    assert dispatcher.stats.failed == 1
    assert dispatcher.stats.retries_scheduled == 3


async def test_failures_of_every_kind_still_deliver_everything_in_order(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    clock: FakeClock,
) -> None:
    calls = [await add_call(webhook_url=receiver.url(f"/c{i}")) for i in range(3)]
    expected: dict[str, int] = {}
    events = []
    for call in calls:
        events += await add_events(call, 5)
        expected[call.id] = 5
    seen: Counter[str] = Counter()
    failures: list[Behaviour] = [Reply(status=500), Close(), Hang(), Reply(status=503), Close()]

    def plan(request: Received) -> Behaviour:
        body = envelope(request)
        seen[body["id"]] += 1
        # The first two attempts of every event fail, each in another way.
        if seen[body["id"]] <= 2:
            return failures[(int(body["sequence"]) + seen[body["id"]]) % len(failures)]
        return Reply(status=204)

    receiver.plan = plan
    dispatcher = make_dispatcher(timeout=0.3, retry=RetryPolicy(schedule=(1.0, 2.0, 4.0)))
    await settle_all(dispatcher, clock)

    assert_signed(receiver.requests)
    assert_in_order_without_gaps(receiver.requests, expected)
    for event in events:
        stored = await load_event(database, event.id)
        assert stored.delivery_state == DeliveryState.DELIVERED
        assert stored.attempts == 3
        log = await load_attempts(database, event.id)
        assert log[2].status_code == 204
        for attempt in log[:2]:
            assert attempt.status_code in (500, 503) or attempt.error
    errors = ""
    for event in events:
        errors += " ".join(a.error or "" for a in await load_attempts(database, event.id))
    assert "timeout" in errors  # the hung requests
    assert "RemoteProtocolError" in errors or "ReadError" in errors  # the closed connections


# -- 410 Gone ------------------------------------------------------------------------------


async def test_410_gone_stops_all_sending_to_that_url_until_a_redelivery(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    clock: FakeClock,
) -> None:
    gone_url, other_url = receiver.url("/gone"), receiver.url("/other")
    call = await add_call(webhook_url=gone_url)
    sibling = await add_call(webhook_url=gone_url)
    bystander = await add_call(webhook_url=other_url)
    first, second = await add_events(call, 2)
    (bystander_event,) = await add_events(bystander, 1)
    receiver.plan = lambda r: Reply(status=410) if r.path == "/gone" else Reply()
    dispatcher = make_dispatcher()

    await settle_all(dispatcher, clock)
    # (Attempts already in flight to the URL when the 410 comes still finish; this event
    # of another call is written after it.)
    (sibling_event,) = await add_events(sibling, 1)
    await settle_all(dispatcher, clock)

    gone_requests = [r for r in receiver.requests if r.path == "/gone"]
    assert len(gone_requests) == 1  # one 410, then nothing more to that URL
    for event_id in (first.id, second.id, sibling_event.id):
        assert (await load_event(database, event_id)).delivery_state == DeliveryState.FAILED
    assert (await load_event(database, first.id)).attempts == 1
    assert (await load_event(database, second.id)).attempts == 0  # failed without an attempt
    assert await load_attempts(database, second.id) == []
    assert (await load_event(database, bystander_event.id)).delivery_state == (
        DeliveryState.DELIVERED
    )

    # The decision survives a restart: it is read back from the attempt log.
    (later,) = await add_events(call, 1)
    restarted = make_dispatcher()
    await restarted.run_due()
    assert len([r for r in receiver.requests if r.path == "/gone"]) == 1
    assert (await load_event(database, later.id)).delivery_state == DeliveryState.FAILED

    # An explicit redelivery tries again; once it succeeds the URL is usable again.
    receiver.plan = lambda r: Reply()
    assert await restarted.redeliver(second.id)
    await restarted.run_due()
    assert (await load_event(database, second.id)).delivery_state == DeliveryState.DELIVERED
    (fresh,) = await add_events(sibling, 1)
    await restarted.run_due()
    assert (await load_event(database, fresh.id)).delivery_state == DeliveryState.DELIVERED


# -- redelivery --------------------------------------------------------------------------------


async def test_redeliver_requeues_one_event_and_keeps_its_attempts(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    clock: FakeClock,
) -> None:
    call = await add_call(webhook_url=receiver.url())
    first, _second = await add_events(call, 2)
    dispatcher = make_dispatcher()
    await dispatcher.run_due()
    assert len(receiver.requests) == 2

    clock.advance(60)
    assert await dispatcher.redeliver(first.id) is True
    stored = await load_event(database, first.id)
    assert stored.delivery_state == DeliveryState.PENDING
    assert stored.attempts == 1
    assert stored.next_attempt_at == clock.now()
    assert stored.delivered_at is None

    assert await dispatcher.run_due() == 1
    assert [envelope(r)["sequence"] for r in receiver.requests] == [1, 2, 1]
    assert receiver.requests[2].headers["webhook-id"] == first.id  # same id: dedupe on it
    assert_signed(receiver.requests)
    stored = await load_event(database, first.id)
    assert stored.delivery_state == DeliveryState.DELIVERED
    assert stored.attempts == 2
    assert [a.attempt for a in await load_attempts(database, first.id)] == [1, 2]

    assert await dispatcher.redeliver("evt_does_not_exist") is False


async def test_redeliver_of_a_given_up_event_gets_one_more_attempt(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    clock: FakeClock,
) -> None:
    call = await add_call(webhook_url=receiver.url())
    (event,) = await add_events(call, 1)
    receiver.plan = lambda r: Reply(status=500)
    dispatcher = make_dispatcher(retry=RetryPolicy(schedule=(1.0,)))
    await settle_all(dispatcher, clock)
    assert (await load_event(database, event.id)).delivery_state == DeliveryState.FAILED

    assert await dispatcher.redeliver(event.id)
    await dispatcher.run_due()
    stored = await load_event(database, event.id)
    assert stored.attempts == 3
    assert stored.delivery_state == DeliveryState.FAILED  # still failing: no retries left
    assert len(receiver.requests) == 3


# -- the worker --------------------------------------------------------------------------------


async def test_notify_wakes_the_worker_without_waiting_for_the_poll(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
) -> None:
    # A one-hour poll: only notify() can get the event out within the test's bound.
    dispatcher = make_dispatcher(poll_interval=3600.0, dispatcher_kwargs={"clock": SystemClock()})
    await dispatcher.start()
    await dispatcher.wait_idle()
    call = await add_call(webhook_url=receiver.url())
    (event,) = await add_events(call, 1)
    dispatcher.notify()
    await receiver.wait_for(lambda reqs: any(r.acknowledged for r in reqs))
    assert envelope(receiver.requests[0])["id"] == event.id


async def test_worker_delivers_many_calls_in_order_across_failures(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    seen: Counter[str] = Counter()

    def plan(request: Received) -> Behaviour:
        body = envelope(request)
        seen[body["id"]] += 1
        if seen[body["id"]] == 1 and body["sequence"] % 3 == 0:
            return Reply(status=500)
        if seen[body["id"]] == 1 and body["sequence"] % 4 == 0:
            return Close()
        return Reply()

    receiver.plan = plan
    dispatcher = make_dispatcher(
        retry=RetryPolicy(schedule=(0.01, 0.02, 0.05), jitter=0.0),
        max_in_flight=4,
        dispatcher_kwargs={"clock": SystemClock()},
    )
    await dispatcher.start()
    expected: dict[str, int] = {}
    calls = [await add_call(webhook_url=receiver.url(f"/c{i}")) for i in range(8)]
    for round_ in range(3):  # events keep coming while earlier ones are in flight
        for call in calls:
            await add_events(call, 3)
            expected[call.id] = 3 * (round_ + 1)
            dispatcher.notify()
    total = sum(expected.values())

    def all_acknowledged(reqs: list[Received]) -> bool:
        return len({envelope(r)["id"] for r in reqs if r.acknowledged}) == total

    await receiver.wait_for(all_acknowledged)
    await dispatcher.stop(flush_timeout=5.0)

    assert_signed(receiver.requests)
    assert_in_order_without_gaps(receiver.requests, expected)
    counts = attempts_by_event(receiver.requests)
    async with database.session() as session:
        from sqlalchemy import select

        from app.store.models import CallEvent

        rows = (await session.execute(select(CallEvent))).scalars().all()
    assert len(rows) == total
    for row in rows:
        assert row.delivery_state == DeliveryState.DELIVERED
        assert row.attempts == counts[row.id]


async def test_a_hanging_receiver_blocks_only_its_own_call(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    hold = Hang()
    receiver.plan = lambda r: (
        hold if r.path == "/slow" and envelope(r)["sequence"] == 1 else Reply()
    )
    dispatcher = make_dispatcher(timeout=30.0, dispatcher_kwargs={"clock": SystemClock()})
    slow = await add_call(webhook_url=receiver.url("/slow"))
    fast = await add_call(webhook_url=receiver.url("/fast"))
    slow_events = await add_events(slow, 2)
    await add_events(fast, 3)
    await dispatcher.start()

    # The fast call's events all get through while the slow call's first one is held...
    await receiver.wait_for(
        lambda reqs: sum(r.path == "/fast" and r.acknowledged for r in reqs) == 3
    )
    slow_seen = [envelope(r)["sequence"] for r in receiver.requests if r.path == "/slow"]
    # ... and the slow call's second event has not been sent behind its back.
    assert slow_seen == [1]
    assert (await load_event(database, slow_events[1].id)).attempts == 0

    hold.release.set()
    await receiver.wait_for(
        lambda reqs: sum(r.path == "/slow" and r.acknowledged for r in reqs) == 2
    )
    assert [envelope(r)["sequence"] for r in receiver.requests if r.path == "/slow"] == [1, 2]


async def test_stop_flushes_what_is_deliverable(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    dispatcher = make_dispatcher(poll_interval=3600.0, dispatcher_kwargs={"clock": SystemClock()})
    await dispatcher.start()
    await dispatcher.wait_idle()
    calls = [await add_call(webhook_url=receiver.url()) for _ in range(3)]
    events = [e for call in calls for e in await add_events(call, 4)]
    # No notify(): the flush on stop must find them itself.
    await dispatcher.stop(flush_timeout=15.0)
    assert not dispatcher.running
    for event in events:
        assert (await load_event(database, event.id)).delivery_state == DeliveryState.DELIVERED
    assert len(receiver.requests) == len(events)


async def test_stop_cancels_a_hung_attempt_and_leaves_the_event_pending(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    receiver.plan = lambda r: Hang()
    dispatcher = make_dispatcher(timeout=30.0, dispatcher_kwargs={"clock": SystemClock()})
    call = await add_call(webhook_url=receiver.url())
    (event,) = await add_events(call, 1)
    await dispatcher.start()
    await receiver.wait_for(lambda reqs: len(reqs) == 1)
    await dispatcher.stop(flush_timeout=0.05)
    stored = await load_event(database, event.id)
    # Not recorded as an attempt: sent again after the restart (at least once).
    assert stored.delivery_state == DeliveryState.PENDING
    assert stored.attempts == 0
    assert await load_attempts(database, event.id) == []


# -- timeouts, closed connections, response bodies ------------------------------------------


async def test_a_timeout_is_recorded_and_retried(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    receiver.plan = lambda r: Hang()
    call = await add_call(webhook_url=receiver.url())
    (event,) = await add_events(call, 1)
    dispatcher = make_dispatcher(timeout=0.2)
    await dispatcher.run_due()
    stored = await load_event(database, event.id)
    assert stored.delivery_state == DeliveryState.PENDING
    assert stored.attempts == 1
    (attempt,) = await load_attempts(database, event.id)
    assert attempt.status_code is None
    assert attempt.error is not None and "timeout" in attempt.error.lower()


async def test_a_closed_connection_is_recorded_and_retried(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    receiver.plan = lambda r: Close()
    call = await add_call(webhook_url=receiver.url())
    (event,) = await add_events(call, 1)
    dispatcher = make_dispatcher()
    await dispatcher.run_due()
    (attempt,) = await load_attempts(database, event.id)
    assert attempt.status_code is None
    assert attempt.error and "disconnected" in attempt.error.lower()
    assert (await load_event(database, event.id)).delivery_state == DeliveryState.PENDING


async def test_on_response_gets_the_2xx_body_and_the_excerpt_is_capped(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    actions = json.dumps([{"action": "accept"}] * 200).encode()  # > 1 KiB
    assert len(actions) > 1024
    receiver.plan = lambda r: Reply(body=actions, content_type="application/json")
    got: list[tuple[WebhookEvent, WebhookResponse]] = []

    async def hook(event: WebhookEvent, response: WebhookResponse) -> None:
        got.append((event, response))
        if event.sequence == 1:
            raise RuntimeError("a broken hook must not break delivery")

    call = await add_call(webhook_url=receiver.url())
    events = await add_events(call, 2, type="call.initiated")
    dispatcher = make_dispatcher(dispatcher_kwargs={"on_response": hook})
    await dispatcher.run_due()

    assert [(e.id, e.type, e.sequence) for e, _ in got] == [
        (events[0].id, "call.initiated", 1),
        (events[1].id, "call.initiated", 2),
    ]
    assert got[0][1].status_code == 200
    assert json.loads(got[0][1].body) == [{"action": "accept"}] * 200
    assert got[0][1].headers["content-type"] == "application/json"
    assert got[0][0].data["call"]["id"] == call.id
    (attempt,) = await load_attempts(database, events[0].id)
    assert attempt.response_excerpt is not None
    assert len(attempt.response_excerpt.encode()) == 1024
    assert actions.decode().startswith(attempt.response_excerpt)


def test_excerpt_is_text_of_at_most_1_kib_without_nul() -> None:
    assert excerpt(b"") is None
    assert excerpt(b"ok\x00ay") == "okay"
    accents = excerpt("é".encode() * 1000)  # 2 bytes each
    assert accents == "é" * 512
    garbage = excerpt(b"\xff" * 2000)  # each becomes U+FFFD, 3 bytes
    assert garbage is not None and garbage == "\ufffd" * 341
    assert len(garbage.encode()) <= 1024


# -- SSRF --------------------------------------------------------------------------------------


async def test_private_literal_targets_are_refused_without_a_request(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    call = await add_call(webhook_url=receiver.url())  # 127.0.0.1
    first, second = await add_events(call, 2)
    dispatcher = make_dispatcher(allow_private=False)
    await dispatcher.run_due()
    assert receiver.requests == []
    for event in (first, second):  # given up at once; the next event went its way
        stored = await load_event(database, event.id)
        assert stored.delivery_state == DeliveryState.FAILED
        assert stored.attempts == 1
        (attempt,) = await load_attempts(database, event.id)
        assert attempt.error is not None and attempt.error.startswith("refused:")
        assert "loopback" in attempt.error


async def test_a_name_resolving_to_a_private_address_is_refused_at_connect(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    async def rebinding(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    url = f"http://hooks.example.test:{receiver.port}/hook"
    assert check_webhook_url(url, allow_private=False) == url  # passes the pure check
    call = await add_call(webhook_url=url)
    (event,) = await add_events(call, 1)
    dispatcher = make_dispatcher(allow_private=False, dispatcher_kwargs={"resolver": rebinding})
    await dispatcher.run_due()
    assert receiver.requests == []
    (attempt,) = await load_attempts(database, event.id)
    assert attempt.error is not None
    assert "refused: hooks.example.test resolves to 127.0.0.1 is a loopback" in attempt.error
    assert (await load_event(database, event.id)).delivery_state == DeliveryState.FAILED


async def test_the_guard_connects_to_the_address_it_checked(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    # ".test" never resolves for real: the delivery can only arrive if the connection
    # goes to the address the guard resolved and checked (here 127.0.0.1, let through by
    # a permissive check standing in for a public address).
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    def permit_loopback(host: str, addresses: Iterable[IPAddress]) -> list[IPAddress]:
        return list(addresses)

    import httpx

    def client() -> httpx.AsyncClient:
        transport = Http11Transport(guard=True, resolver=resolver, check=permit_loopback)
        return httpx.AsyncClient(transport=transport, trust_env=False)

    url = f"http://hooks.example.test:{receiver.port}/pinned"
    call = await add_call(webhook_url=url)
    (event,) = await add_events(call, 1)
    dispatcher = make_dispatcher(
        allow_private=False, dispatcher_kwargs={"http_client_factory": client}
    )
    await dispatcher.run_due()
    (request,) = receiver.requests
    assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert (await load_event(database, event.id)).delivery_state == DeliveryState.DELIVERED


async def test_the_operators_default_url_is_trusted_but_not_its_neighbours(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    default = receiver.url("/default")
    plain = await add_call(webhook_url=None)
    sneaky = await add_call(webhook_url=receiver.url("/admin"))
    (plain_event,) = await add_events(plain, 1)
    (sneaky_event,) = await add_events(sneaky, 1)
    dispatcher = make_dispatcher(allow_private=False, default_url=default)
    await dispatcher.run_due()
    assert [r.path for r in receiver.requests] == ["/default"]
    assert (await load_event(database, plain_event.id)).delivery_state == (DeliveryState.DELIVERED)
    assert (await load_event(database, sneaky_event.id)).delivery_state == DeliveryState.FAILED


async def test_a_url_on_the_trusted_host_by_name_is_still_checked(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
) -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("10.0.0.5")]

    call = await add_call(webhook_url="http://hooks.internal.test/admin")
    (event,) = await add_events(call, 1)
    dispatcher = make_dispatcher(
        allow_private=False,
        default_url="http://hooks.internal.test/callctl",
        dispatcher_kwargs={"resolver": resolver},
    )
    await dispatcher.run_due()
    (attempt,) = await load_attempts(database, event.id)
    assert attempt.error is not None and "10.0.0.5 is a private address" in attempt.error
    assert (await load_event(database, event.id)).delivery_state == DeliveryState.FAILED


# -- configuration -----------------------------------------------------------------------------


def test_config_from_settings(database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        webhook_url="https://hooks.example.com/x",
        webhook_secret=SECRETS[0],
        webhook_timeout=3.0,
        webhook_retry_schedule="1,5,30",
        webhook_allow_private=True,
    )
    config = WebhookConfig.from_settings(settings, max_in_flight=8)
    assert config.default_url == "https://hooks.example.com/x"
    assert config.keys == parse_secrets(SECRETS[0])
    assert config.timeout == 3.0
    assert config.retry.schedule == (1.0, 5.0, 30.0)
    assert config.retry.max_attempts == 4
    assert config.allow_private is True
    assert config.max_in_flight == 8
    assert "whsec" not in repr(config)
    with pytest.raises(ValueError):
        WebhookConfig(max_in_flight=0)


async def test_a_second_start_is_refused(make_dispatcher: MakeDispatcher) -> None:
    dispatcher = make_dispatcher(dispatcher_kwargs={"clock": SystemClock()})
    await dispatcher.start()
    assert dispatcher.running
    with pytest.raises(RuntimeError):
        await dispatcher.start()
    await dispatcher.stop()
    assert not dispatcher.running


async def test_an_attempt_that_could_not_be_recorded_is_sent_again(
    make_dispatcher: MakeDispatcher,
    add_call: AddCall,
    add_events: AddEvents,
    receiver: Receiver,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.webhooks import outbox

    real_write = outbox.write_outcomes_sync
    failures = [RuntimeError("database went away")]

    def flaky_write(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        real_write(*args, **kwargs)

    monkeypatch.setattr(outbox, "write_outcomes_sync", flaky_write)
    # The call is held back for one poll interval after the failed write.
    dispatcher = make_dispatcher(poll_interval=0.05, dispatcher_kwargs={"clock": SystemClock()})
    call = await add_call(webhook_url=receiver.url())
    (event,) = await add_events(call, 1)
    await dispatcher.start()
    await receiver.wait_for(lambda reqs: len(reqs) == 2)
    await dispatcher.stop(flush_timeout=5.0)

    # At least once: the receiver saw it twice (same webhook-id), the log has one row.
    assert [r.headers["webhook-id"] for r in receiver.requests] == [event.id, event.id]
    stored = await load_event(database, event.id)
    assert stored.delivery_state == DeliveryState.DELIVERED
    assert stored.attempts == 1
    assert len(await load_attempts(database, event.id)) == 1
