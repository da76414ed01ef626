"""The webhook-driven answer flow: parsing the answer to call.initiated, running its actions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from app.calls import commands
from app.calls.answer_flow import MAX_ACTIONS, AnswerFlow, AnswerFlowError, parse_actions
from app.errors import InvalidStateError
from app.store.models import Call
from app.ua import Inviter
from app.webhooks import WebhookEvent, WebhookResponse

from .conftest import Harness


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_one_action_or_a_list() -> None:
    [accept] = parse_actions(_body({"action": "accept"}))
    assert accept.action == "accept"
    assert accept.command == commands.Accept()
    progress, accept = parse_actions(
        _body(
            [
                {"action": "progress", "status_code": 183, "early_media": True},
                {"action": "accept", "headers": {"X-Agent": ["7", "8"]}},
            ]
        )
    )
    assert progress.command == commands.Progress(status_code=183, early_media=True)
    assert accept.command == commands.Accept(headers=(("X-Agent", "7"), ("X-Agent", "8")))
    [reject] = parse_actions(_body({"action": "reject", "status_code": 486}))
    assert reject.command == commands.Reject(status_code=486)
    [default_reject] = parse_actions(_body({"action": "reject"}))
    assert default_reject.command == commands.Reject(status_code=480)


@pytest.mark.parametrize("body", [b"", b"  \n", b"thanks, got it", b"\xff\xfe", b"<ok/>"])
def test_empty_or_non_json_means_no_action(body: bytes) -> None:
    assert parse_actions(body) == []


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"action": "dance"}, "action must be one of"),
        ({"status_code": 180}, "action must be one of"),
        ("accept", "must be an object"),
        (42, "must be an object"),
        ({"action": "reject", "status_code": 200}, "300-699"),
        ({"action": "reject", "status_code": True}, "300-699"),
        ({"action": "progress", "status_code": 200}, "101-199"),
        ({"action": "progress", "reason": "a\r\nb"}, "CR, LF"),
        ({"action": "progress", "reliable": "yes"}, "true or false"),
        ({"action": "accept", "headers": {"Via": "x"}}, "user agent"),
        ({"action": "accept", "headers": {"X-A": 1}}, "strings"),
        ({"action": "accept", "status_code": 200}, "unknown fields"),
        ([{"action": "accept"}] * (MAX_ACTIONS + 1), "at most"),
    ],
)
def test_invalid_json_actions_are_refused(value: Any, words: str) -> None:
    with pytest.raises(AnswerFlowError, match=words):
        parse_actions(_body(value))


class Recorder:
    """Stands in for the service where only the dispatching is under test."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.refuse = refuse

    async def _record(self, action: str, call_id: str, command: object) -> object:
        if action == self.refuse:
            raise InvalidStateError("no", state="terminated", allowed_actions=["hangup"])
        self.calls.append((action, call_id, command))
        return {}

    async def progress(self, call_id: str, command: commands.Progress) -> object:
        return await self._record("progress", call_id, command)

    async def accept(self, call_id: str, command: commands.Accept) -> object:
        return await self._record("accept", call_id, command)

    async def reject(self, call_id: str, command: commands.Reject) -> object:
        return await self._record("reject", call_id, command)

    async def hangup(self, call_id: str, command: commands.Hangup | None = None) -> object:
        return await self._record("hangup", call_id, command)

    async def bye(self, call_id: str, command: commands.Hangup | None = None) -> object:
        return await self._record("bye", call_id, command)


def _event(event_type: str = "call.initiated", direction: str = "inbound") -> WebhookEvent:
    return WebhookEvent(
        id="evt_1",
        call_id="call_1",
        sequence=1,
        type=event_type,
        data={"call": {"id": "call_1", "direction": direction}},
    )


def _answer(value: Any) -> WebhookResponse:
    return WebhookResponse(status_code=200, headers={}, body=_body(value))


async def test_actions_run_in_order() -> None:
    recorder = Recorder()
    flow = AnswerFlow(recorder)
    await flow(
        _event(),
        _answer([{"action": "progress"}, {"action": "accept"}, {"action": "bye"}]),
    )
    assert [(a, c) for a, c, _ in recorder.calls] == [
        ("progress", "call_1"),
        ("accept", "call_1"),
        ("bye", "call_1"),
    ]


async def test_a_refused_action_stops_the_list() -> None:
    recorder = Recorder(refuse="progress")
    await AnswerFlow(recorder)(_event(), _answer([{"action": "progress"}, {"action": "accept"}]))
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("event", "answer"),
    [
        (_event("call.progress"), {"action": "accept"}),  # only call.initiated answers count
        (_event(direction="outbound"), {"action": "accept"}),  # only inbound calls
        (_event(), [{"action": "accept"}, {"action": "nope"}]),  # invalid: nothing runs
    ],
)
async def test_answers_that_run_nothing(event: WebhookEvent, answer: Any) -> None:
    recorder = Recorder()
    await AnswerFlow(recorder)(event, _answer(answer))
    assert recorder.calls == []


async def test_accept_through_the_flow_answers_a_real_call(harness: Harness) -> None:
    inviter = Inviter(harness.peer.ua, harness.uri)
    await inviter.invite()
    events: list[Any] = []

    async def initiated() -> bool:
        async with harness.database.session() as session:
            rows = (await session.execute(select(Call))).scalars().all()
        if not rows:
            return False
        events[:] = await harness.events(rows[0].id)
        return bool(events)

    await harness.commits.until(initiated)
    event = WebhookEvent(
        id=events[0].id,
        call_id=events[0].call_id,
        sequence=1,
        type=events[0].type,
        data=events[0].payload,
    )
    await AnswerFlow(harness.service)(event, _answer({"action": "accept"}))
    found = await harness.until_event(event.call_id, "call.answered")
    assert found[-1].payload["call"]["state"] == "established"
    await inviter.bye()
    await harness.until_event(event.call_id, "call.ended")
