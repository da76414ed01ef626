"""Dialing without an Idempotency-Key: the INVITE leaves first, the call row follows with its
call.initiated in the writer's next group commit, and the dial returns once that is committed.

When the database refuses the row (a trigger here: a real refusal, not a mock), the call
cannot be followed: the INVITE already left, so it is canceled and the dial fails with 503.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, text

from app.calls import commands
from app.errors import ServiceUnavailableError
from app.store.db import Database
from app.store.models import Call

from .conftest import WAIT, Harness

_SQLITE_REFUSAL = (
    "CREATE TRIGGER refuse_calls BEFORE INSERT ON calls "
    "BEGIN SELECT RAISE(ABORT, 'calls refused by the test'); END",
)
_POSTGRES_REFUSAL = (
    "CREATE FUNCTION refuse_calls() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'calls refused by the test'; END $$",
    "CREATE TRIGGER refuse_calls BEFORE INSERT ON calls "
    "FOR EACH ROW EXECUTE FUNCTION refuse_calls()",
)


async def _refuse_new_calls(database: Database, backend: str) -> None:
    statements = _SQLITE_REFUSAL if backend == "sqlite" else _POSTGRES_REFUSAL
    async with database.engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


async def test_dial_commits_the_row_with_call_initiated(harness: Harness) -> None:
    result = await harness.service.dial(commands.Dial(to=harness.peer.uri, client_state="c"))
    call = result.call
    # The row is committed when the dial returns (the far end's 180 may be in it already).
    row = await harness.call(call["id"])
    assert (row["id"], row["sip"]["call_id"], row["client_state"]) == (
        call["id"],
        call["sip"]["call_id"],
        "c",
    )
    assert call["state"] == "establishing"
    events = await harness.events(call["id"])
    assert events[0].type == "call.initiated" and events[0].sequence == 1
    initiated = events[0].payload["call"]
    assert initiated["state"] == "establishing"
    assert initiated["sip"] == call["sip"] and initiated["client_state"] == "c"
    invitation = await harness.peer.next_invitation()
    assert invitation.request.call_id == call["sip"]["call_id"]
    await invitation.reject(486)
    await harness.until_event(call["id"], "call.ended")


async def test_a_refused_row_cancels_the_call_and_answers_503(
    harness: Harness, database: Database, database_backend: str
) -> None:
    await _refuse_new_calls(database, database_backend)
    dialing = asyncio.ensure_future(harness.service.dial(commands.Dial(to=harness.peer.uri)))
    # The INVITE left although the row could not be written.
    invitation = await harness.peer.next_invitation()
    with pytest.raises(ServiceUnavailableError):
        # The writer tries again for a few seconds (RETRY_DELAYS) before it gives up.
        await asyncio.wait_for(dialing, WAIT)
    end = await asyncio.wait_for(invitation.wait_ended(), WAIT)
    assert (end.cause, end.by) == ("canceled", "remote")
    async with database.session() as session:
        assert (await session.execute(select(Call))).scalars().all() == []
