"""CallService with real user agents on loopback and the real test database.

Every UA callback becomes one committed transaction: the call row and the outbox event
land together, with per-call sequences 1, 2, 3... The 409 rules, idempotency, orphan
recovery and inbound calls (the prepared half of issue 5) are checked here too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from app.calls import commands
from app.calls.service import CallService, IdempotencyMismatchError
from app.errors import CallNotFoundError, InvalidStateError, ServiceUnavailableError
from app.store.db import Database
from app.store.models import Call, CallEvent, DeliveryState
from app.store.repositories import CallRepository, EventRepository
from app.ua import Inviter

from .conftest import WAIT, Commits, Harness


def _dial(harness: Harness, **kw: Any) -> commands.Dial:
    return commands.Dial(to=harness.peer.uri, **kw)


def _sequences(events: list[CallEvent]) -> list[int]:
    return [event.sequence for event in events]


async def test_answered_call_then_local_bye(harness: Harness) -> None:
    result = await harness.service.dial(_dial(harness, client_state="c-1"))
    assert result.created
    call = result.call
    call_id = call["id"]
    # Returned once the INVITE was handed to the UA: already establishing, committed.
    assert call["state"] == "establishing"
    assert call["direction"] == "outbound"
    assert call["client_state"] == "c-1"
    assert (await harness.types(call_id))[0] == "call.initiated"  # a 180 may follow already

    invitation = await harness.peer.next_invitation()
    assert invitation.request.call_id == call["sip"]["call_id"]
    assert invitation.request.from_.tag == call["sip"]["local_tag"]
    await invitation.accept()
    events = await harness.until_event(call_id, "call.answered")
    assert [e.type for e in events] == ["call.initiated", "call.progress", "call.answered"]
    assert _sequences(events) == [1, 2, 3]
    assert events[1].payload["sip_code"] == 180
    answered = events[2].payload["call"]
    assert answered["state"] == "established"
    assert answered["answered_at"] is not None
    assert answered["sip"]["remote_tag"] == invitation.local_tag
    assert answered["last_response"] == {"code": 200, "reason": "OK"}

    after_bye = await harness.service.bye(call_id)
    assert after_bye["state"] == "terminating"  # the 200 to the BYE comes as an event
    events = await harness.until_event(call_id, "call.ended")
    assert [e.type for e in events][-1] == "call.ended"
    assert _sequences(events) == list(range(1, len(events) + 1))
    ended = events[-1].payload["call"]
    assert ended["state"] == "terminated"
    assert ended["end"] == {
        "cause": "local_bye",
        "sip_code": None,
        "reason": "local_bye",
        "by": "local",
    }
    row = await harness.call(call_id)
    assert row == ended  # the row is what the last event showed
    assert row["ended_at"] is not None


async def test_remote_bye(harness: Harness) -> None:
    call_id = (await harness.service.dial(_dial(harness))).call["id"]
    invitation = await harness.peer.next_invitation()
    await invitation.accept()
    await harness.until_event(call_id, "call.answered")
    await invitation.bye()
    events = await harness.until_event(call_id, "call.ended")
    end = events[-1].payload["call"]["end"]
    assert end["cause"] == "remote_bye" and end["by"] == "remote"


async def test_rejected_call_carries_the_sip_code(harness: Harness) -> None:
    call_id = (await harness.service.dial(_dial(harness))).call["id"]
    invitation = await harness.peer.next_invitation()
    await invitation.reject(486)
    events = await harness.until_event(call_id, "call.ended")
    assert [e.type for e in events] == ["call.initiated", "call.progress", "call.ended"]
    call = events[-1].payload["call"]
    assert call["end"] == {
        "cause": "rejected",
        "sip_code": 486,
        "reason": "Busy Here",
        "by": "remote",
    }
    assert call["last_response"] == {"code": 486, "reason": "Busy Here"}
    assert call["answered_at"] is None


async def test_cancel_before_answer(harness: Harness) -> None:
    call_id = (await harness.service.dial(_dial(harness))).call["id"]
    await harness.peer.next_invitation()
    await harness.until_event(call_id, "call.progress")
    after = await harness.service.cancel(call_id)
    assert after["state"] == "terminating"
    events = await harness.until_event(call_id, "call.ended")
    end = events[-1].payload["call"]["end"]
    assert end["cause"] == "canceled" and end["by"] == "local"


async def test_ring_timeout_ends_no_answer(harness: Harness) -> None:
    call_id = (await harness.service.dial(_dial(harness, timeout=0.3))).call["id"]
    await harness.peer.next_invitation()
    events = await harness.until_event(call_id, "call.ended")
    end = events[-1].payload["call"]["end"]
    assert end["cause"] == "no_answer" and end["by"] == "system"


async def test_hangup_fits_the_state(harness: Harness) -> None:
    ringing = (await harness.service.dial(_dial(harness))).call["id"]
    await harness.peer.next_invitation()
    await harness.until_event(ringing, "call.progress")
    assert (await harness.service.hangup(ringing))["state"] == "terminating"  # a CANCEL
    events = await harness.until_event(ringing, "call.ended")
    assert events[-1].payload["call"]["end"]["cause"] == "canceled"

    talking = (await harness.service.dial(_dial(harness))).call["id"]
    invitation = await harness.peer.next_invitation()
    await invitation.accept()
    await harness.until_event(talking, "call.answered")
    assert (await harness.service.hangup(talking))["state"] == "terminating"  # a BYE
    events = await harness.until_event(talking, "call.ended")
    assert events[-1].payload["call"]["end"]["cause"] == "local_bye"

    # On a terminated call, hangup is a no-op: same call, no new event.
    count = len(events)
    assert (await harness.service.hangup(talking))["state"] == "terminated"
    assert len(await harness.events(talking)) == count


async def test_409_rules(harness: Harness) -> None:
    call_id = (await harness.service.dial(_dial(harness))).call["id"]
    invitation = await harness.peer.next_invitation()

    with pytest.raises(InvalidStateError) as bye_early:
        await harness.service.bye(call_id)  # bye before established
    assert bye_early.value.extensions == {
        "state": "establishing",
        "allowed_actions": ["cancel", "hangup"],
    }
    with pytest.raises(InvalidStateError) as accept_outbound:
        await harness.service.accept(call_id, commands.Accept())  # accept on an outbound call
    assert accept_outbound.value.extensions["state"] == "establishing"
    for refused in (
        harness.service.progress(call_id, commands.Progress()),
        harness.service.reject(call_id, commands.Reject()),
    ):
        with pytest.raises(InvalidStateError):
            await refused

    await invitation.accept()
    await harness.until_event(call_id, "call.answered")
    with pytest.raises(InvalidStateError) as cancel_late:
        await harness.service.cancel(call_id)  # cancel after the 2xx
    assert cancel_late.value.extensions == {
        "state": "established",
        "allowed_actions": ["bye", "hangup"],
    }
    await harness.service.bye(call_id)
    events = await harness.until_event(call_id, "call.ended")
    # Anything after terminated is 409 (but hangup); nothing is written.
    for action in (harness.service.bye, harness.service.cancel):
        with pytest.raises(InvalidStateError) as late:
            await action(call_id)
        assert late.value.extensions == {"state": "terminated", "allowed_actions": ["hangup"]}
    assert len(await harness.events(call_id)) == len(events)


async def test_unknown_call_is_404(harness: Harness) -> None:
    for action in (harness.service.bye, harness.service.cancel, harness.service.hangup):
        with pytest.raises(CallNotFoundError):
            await action("call_nope")
    with pytest.raises(CallNotFoundError):
        await harness.service.accept("call_nope", commands.Accept())


async def test_idempotent_dial(harness: Harness) -> None:
    command = _dial(harness, client_state="k")
    first, second = await asyncio.gather(
        harness.service.dial(command, idempotency_key="key-1"),
        harness.service.dial(command, idempotency_key="key-1"),
    )
    assert {first.created, second.created} == {True, False}
    assert first.call["id"] == second.call["id"]
    invitation = await harness.peer.next_invitation()
    again = await harness.service.dial(command, idempotency_key="key-1")
    assert not again.created and again.call["id"] == first.call["id"]
    with pytest.raises(IdempotencyMismatchError) as mismatch:
        await harness.service.dial(_dial(harness, client_state="other"), idempotency_key="key-1")
    assert mismatch.value.extensions["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    await invitation.reject(603)
    await harness.until_event(first.call["id"], "call.ended")
    # Exactly one INVITE reached the peer, one call row exists.
    assert harness.peer.delegate.invitations.empty()
    async with harness.database.session() as session:
        rows = (await session.execute(select(Call))).scalars().all()
    assert [row.id for row in rows] == [first.call["id"]]


async def test_unresolvable_target_fails_after_initiated(harness: Harness) -> None:
    result = await harness.service.dial(commands.Dial(to="sip:bob@host.invalid"))
    call_id = result.call["id"]
    assert result.call["state"] == "terminated"
    events = await harness.until_types(call_id, ["call.initiated", "call.ended"])
    assert events[0].payload["call"]["state"] == "initial"
    end = events[1].payload["call"]["end"]
    assert end["cause"] == "failed" and end["by"] == "system"


async def test_invite_raising_ends_the_call_failed(harness: Harness, database: Database) -> None:
    class Exploding(Inviter):
        async def invite(self) -> None:
            raise RuntimeError("boom")

    service = CallService(database=database, inviter_factory=Exploding)
    service.bind(harness.ua)
    call = (await service.dial(_dial(harness))).call
    assert call["state"] == "terminated"
    assert call["end"]["cause"] == "failed" and "boom" in call["end"]["reason"]
    events = await harness.events(call["id"])
    assert [e.type for e in events] == ["call.initiated", "call.ended"]
    await service.close()


async def test_without_a_user_agent_dialing_is_503(database: Database) -> None:
    service = CallService(database=database)
    with pytest.raises(ServiceUnavailableError):
        await service.dial(commands.Dial(to="sip:bob@127.0.0.1"))


async def test_webhook_delivery_state_follows_the_url(database: Database, harness: Harness) -> None:
    hooked = (
        await harness.service.dial(_dial(harness, webhook_url="https://hooks.example.com/x"))
    ).call["id"]
    plain = (await harness.service.dial(_dial(harness))).call["id"]
    states = {event.delivery_state for event in await harness.events(hooked)}
    assert states == {DeliveryState.PENDING.value}
    assert {event.delivery_state for event in await harness.events(plain)} == {
        DeliveryState.SKIPPED.value
    }
    defaulted = CallService(
        database=database,
        notifier=harness.commits,
        default_webhook_url="https://d.example.com/",
    )
    defaulted.bind(harness.ua)
    other = (await defaulted.dial(_dial(harness))).call["id"]
    events = await harness.events(other)
    assert events and {e.delivery_state for e in events} == {DeliveryState.PENDING.value}
    for _ in range(3):
        await (await harness.peer.next_invitation()).reject(486)
    await harness.until_event(other, "call.ended")
    await defaulted.drain(within=WAIT)
    await defaulted.close()


async def test_recover_ends_orphans(
    database: Database, commits: Commits, call_factory: Any
) -> None:
    orphan = call_factory(state="established")
    async with database.session() as session:
        await CallRepository(session).add(orphan)
        await EventRepository(session).append(
            call_id=orphan.id, type="call.initiated", payload={"call": {}}
        )
        await session.commit()
    service = CallService(database=database, notifier=commits)
    assert await service.recover() == 1
    async with database.session() as session:
        events = (await EventRepository(session).list_for_call(orphan.id)).items
        row = await CallRepository(session).get(orphan.id)
    assert row is not None and row.state == "terminated"
    assert (row.end_cause, row.end_by) == ("shutdown", "system")
    assert [(e.sequence, e.type) for e in events] == [(1, "call.initiated"), (2, "call.ended")]
    assert commits.count == 1
    assert await service.recover() == 0
    # A REST action on the (now terminated) call follows the rules.
    assert (await service.hangup(orphan.id))["state"] == "terminated"


async def test_action_on_an_orphan_ends_it_first(database: Database, call_factory: Any) -> None:
    orphan = call_factory(state="establishing")
    async with database.session() as session:
        await CallRepository(session).add(orphan)
        await session.commit()
    service = CallService(database=database)
    with pytest.raises(InvalidStateError) as refused:
        await service.cancel(orphan.id)
    assert refused.value.extensions["state"] == "terminated"
    async with database.session() as session:
        events = (await EventRepository(session).list_for_call(orphan.id)).items
    assert [e.type for e in events] == ["call.ended"]


async def test_shutdown_ends_live_calls(harness: Harness) -> None:
    call_id = (await harness.service.dial(_dial(harness))).call["id"]
    invitation = await harness.peer.next_invitation()
    await invitation.accept()
    await harness.until_event(call_id, "call.answered")
    harness.service.unbind()
    await harness.ua.close()
    await harness.service.drain(within=WAIT)
    call = await harness.call(call_id)
    assert call["end"]["cause"] == "shutdown" and call["end"]["by"] == "system"
    assert (await harness.types(call_id))[-1] == "call.ended"
    assert harness.service.live_calls == 0


# -- inbound (the service half of issue 5) ---------------------------------------------------


async def _inbound(harness: Harness) -> tuple[Inviter, str]:
    inviter = Inviter(harness.peer.ua, harness.uri)
    await inviter.invite()

    async def arrived() -> bool:
        async with harness.database.session() as session:
            rows = (await session.execute(select(Call))).scalars().all()
        return any(row.sip_call_id == inviter.call_id for row in rows)

    await harness.commits.until(arrived)
    async with harness.database.session() as session:
        row = (
            await session.execute(select(Call).where(Call.sip_call_id == inviter.call_id))
        ).scalar_one()
    return inviter, row.id


async def test_inbound_call_accepted(harness: Harness) -> None:
    inviter, call_id = await _inbound(harness)
    events = await harness.until_types(call_id, ["call.initiated", "call.progress"])
    initiated = events[0].payload["call"]
    assert initiated["direction"] == "inbound"
    assert initiated["state"] == "initial"
    assert initiated["auto_provisional"] is True
    assert initiated["request"]["headers"]["Call-ID"] == [inviter.call_id]
    assert initiated["request"]["content_type"] == "application/sdp"
    assert initiated["from"] == "sip:bob@127.0.0.1"  # the peer UA's default From
    assert events[1].payload["sip_code"] == 180

    with pytest.raises(InvalidStateError):
        await harness.service.cancel(call_id)  # cancel is the caller's
    after = await harness.service.accept(call_id, commands.Accept())
    assert after["state"] in ("establishing", "established")
    with pytest.raises(InvalidStateError):
        await harness.service.progress(call_id, commands.Progress())  # progress after accept
    await harness.until_event(call_id, "call.answered")
    await inviter.bye()
    events = await harness.until_event(call_id, "call.ended")
    assert events[-1].payload["call"]["end"]["cause"] == "remote_bye"
    assert _sequences(events) == list(range(1, len(events) + 1))


async def test_inbound_call_progress_then_reject(harness: Harness) -> None:
    _, call_id = await _inbound(harness)
    await harness.until_types(call_id, ["call.initiated", "call.progress"])
    await harness.service.progress(call_id, commands.Progress(status_code=183))
    after = await harness.service.reject(call_id, commands.Reject(status_code=486))
    assert after["state"] == "terminated"
    events = await harness.until_event(call_id, "call.ended")
    assert [e.type for e in events] == [
        "call.initiated",
        "call.progress",
        "call.progress",
        "call.ended",
    ]
    assert events[2].payload["sip_code"] == 183
    end = events[-1].payload["call"]["end"]
    assert end == {"cause": "rejected", "sip_code": 486, "reason": "Busy Here", "by": "local"}
