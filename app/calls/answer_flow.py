"""The webhook-driven answer flow (API.md): a 2xx answer to an inbound ``call.initiated``
may carry one action or a list, run in order exactly as if the REST endpoint had been called.

``{"action": "accept"}``, ``{"action": "reject", "status_code": 486}``,
``[{"action": "progress", "status_code": 183, "early_media": true}, {"action": "accept"}]``.
An empty or non-JSON body means "no action" (the client will use REST). A JSON body that is
not a valid action list runs nothing and is logged: like a REST call answered 422. An
action the call's state refuses (a 409) stops the list there.

Plugged into the dispatcher as its ``on_response`` hook: the dispatcher sends the call's
next event only once the hook returns, so the events caused by the actions follow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from app.calls import commands
from app.calls.validation import (
    MAX_REASON,
    HeadersValue,
    check_headers,
    header_fields,
    no_controls,
)
from app.errors import AppError
from app.store.models import Direction, EventType
from app.webhooks import WebhookEvent, WebhookResponse

log = logging.getLogger(__name__)

# More actions than any sensible flow needs (progress, progress, accept ...); a longer
# list is a mistake, not a plan.
MAX_ACTIONS = 16

Command = commands.Progress | commands.Accept | commands.Reject | commands.Hangup


class AnswerFlowError(ValueError):
    """The body is JSON but not a valid action or list of actions."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    action: str
    command: Command


def _status(item: Mapping[str, Any], low: int, high: int, default: int) -> int:
    value = item.get("status_code", default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AnswerFlowError(f"status_code must be an integer {low}-{high}")
    return value


def _reason(item: Mapping[str, Any]) -> str | None:
    value = item.get("reason")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise AnswerFlowError(f"reason must be a string of at most {MAX_REASON} characters")
    try:
        return no_controls(value, "reason", allow_tab=True)
    except ValueError as exc:
        raise AnswerFlowError(str(exc)) from None


def _flag(item: Mapping[str, Any], name: str) -> bool:
    value = item.get(name, False)
    if not isinstance(value, bool):
        raise AnswerFlowError(f"{name} must be true or false")
    return value


def _headers(item: Mapping[str, Any]) -> commands.HeaderFields:
    value = item.get("headers", {})
    if not isinstance(value, dict) or not all(
        isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
        for v in value.values()
    ):
        raise AnswerFlowError("headers must be an object of strings or lists of strings")
    checked: HeadersValue = value
    try:
        return header_fields(check_headers(checked))
    except ValueError as exc:
        raise AnswerFlowError(f"headers: {exc}") from None


_FIELDS: dict[str, frozenset[str]] = {
    "progress": frozenset({"status_code", "reason", "headers", "reliable", "early_media"}),
    "accept": frozenset({"headers"}),
    "reject": frozenset({"status_code", "reason", "headers"}),
    "hangup": frozenset({"headers"}),
    "bye": frozenset({"headers"}),
}


def _step(item: object) -> Step:
    if not isinstance(item, dict):
        raise AnswerFlowError("each action must be an object with an 'action' field")
    action = item.get("action")
    if not isinstance(action, str) or action not in _FIELDS:
        raise AnswerFlowError(f"action must be one of {', '.join(sorted(_FIELDS))}")
    unknown = set(item) - {"action"} - _FIELDS[action]
    if unknown:
        raise AnswerFlowError(f"unknown fields for {action}: {', '.join(sorted(unknown))}")
    command: Command
    if action == "progress":
        command = commands.Progress(
            status_code=_status(item, 101, 199, commands.DEFAULT_PROGRESS_CODE),
            reason=_reason(item),
            headers=_headers(item),
            reliable=_flag(item, "reliable"),
            early_media=_flag(item, "early_media"),
        )
    elif action == "accept":
        command = commands.Accept(headers=_headers(item))
    elif action == "reject":
        command = commands.Reject(
            status_code=_status(item, 300, 699, commands.DEFAULT_REJECT_CODE),
            reason=_reason(item),
            headers=_headers(item),
        )
    else:
        command = commands.Hangup(headers=_headers(item))
    return Step(action=action, command=command)


def parse_actions(body: bytes) -> list[Step]:
    """The actions of a webhook answer; [] for an empty or non-JSON body.

    Raises :class:`AnswerFlowError` for JSON that is not a valid action (list).
    """
    if not body.strip():
        return []
    try:
        data = json.loads(body)
    except ValueError:  # also UnicodeDecodeError: not JSON means no action
        return []
    items = data if isinstance(data, list) else [data]
    if len(items) > MAX_ACTIONS:
        raise AnswerFlowError(f"at most {MAX_ACTIONS} actions")
    return [_step(item) for item in items]


class ActionRunner(Protocol):
    """What the answer flow needs of the call service (its REST actions)."""

    async def progress(self, call_id: str, command: commands.Progress) -> object: ...
    async def accept(self, call_id: str, command: commands.Accept) -> object: ...
    async def reject(self, call_id: str, command: commands.Reject) -> object: ...
    async def hangup(self, call_id: str, command: commands.Hangup | None = None) -> object: ...
    async def bye(self, call_id: str, command: commands.Hangup | None = None) -> object: ...


class AnswerFlow:
    """The dispatcher's ``on_response`` hook: runs the actions of a call.initiated answer."""

    def __init__(self, service: ActionRunner) -> None:
        self._service = service

    async def __call__(self, event: WebhookEvent, response: WebhookResponse) -> None:
        if event.type != EventType.INITIATED.value:
            return
        call = event.data.get("call")
        if not isinstance(call, dict) or call.get("direction") != Direction.INBOUND.value:
            return
        try:
            steps = parse_actions(response.body)
        except AnswerFlowError as exc:
            log.warning(
                "call %s: webhook answer ignored: %s", event.call_id, exc,
                extra={"call_id": event.call_id, "event_id": event.id},
            )  # fmt: skip
            return
        for step in steps:
            try:
                await self._run(event.call_id, step)
            except AppError as exc:  # 409/404 as REST would answer: the list stops here
                log.warning(
                    "call %s: webhook action %s refused: %s", event.call_id, step.action,
                    exc.detail, extra={"call_id": event.call_id, "event_id": event.id},
                )  # fmt: skip
                return
            except ValueError as exc:  # the UA refused the values (e.g. 100rel unsupported)
                log.warning(
                    "call %s: webhook action %s failed: %s", event.call_id, step.action, exc
                )
                return

    async def _run(self, call_id: str, step: Step) -> None:
        service = self._service
        command = step.command
        if isinstance(command, commands.Progress):
            await service.progress(call_id, command)
        elif isinstance(command, commands.Accept):
            await service.accept(call_id, command)
        elif isinstance(command, commands.Reject):
            await service.reject(call_id, command)
        elif step.action == "bye":
            await service.bye(call_id, command)
        else:
            await service.hangup(call_id, command)
