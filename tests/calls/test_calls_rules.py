"""The 409 table: which action each direction allows in each state."""

from __future__ import annotations

import pytest

from app.calls.rules import (
    ALLOWED,
    Action,
    allowed_actions,
    is_allowed,
    is_no_op,
    later_state,
)
from app.store.models import CallState, Direction


def test_every_direction_and_state_has_an_entry() -> None:
    for direction in Direction:
        assert set(ALLOWED[direction]) == set(CallState)


@pytest.mark.parametrize(
    ("direction", "state", "expected"),
    [
        ("outbound", "establishing", ("cancel", "hangup")),
        ("outbound", "established", ("bye", "hangup")),
        ("outbound", "terminating", ("hangup",)),
        ("outbound", "terminated", ("hangup",)),
        ("inbound", "initial", ("progress", "accept", "reject", "hangup")),
        ("inbound", "establishing", ("hangup",)),
        ("inbound", "established", ("bye", "hangup")),
        ("inbound", "terminated", ("hangup",)),
    ],
)
def test_allowed_actions(direction: str, state: str, expected: tuple[str, ...]) -> None:
    assert allowed_actions(direction, state) == expected


@pytest.mark.parametrize(
    ("action", "direction", "state"),
    [
        (Action.ACCEPT, "outbound", "establishing"),  # accept on an outbound call
        (Action.PROGRESS, "inbound", "establishing"),  # progress after accept
        (Action.REJECT, "inbound", "establishing"),  # the 2xx is already sent
        (Action.BYE, "outbound", "establishing"),  # bye before established
        (Action.BYE, "inbound", "initial"),
        (Action.CANCEL, "outbound", "established"),  # after the final response
        (Action.CANCEL, "inbound", "initial"),  # cancel is the caller's
        (Action.BYE, "outbound", "terminated"),  # anything after terminated
        (Action.ACCEPT, "inbound", "terminated"),
    ],
)
def test_refused(action: Action, direction: str, state: str) -> None:
    assert not is_allowed(action, direction, state)


def test_hangup_is_a_no_op_only_once_ending() -> None:
    assert is_no_op(Action.HANGUP, "terminated")
    assert is_no_op(Action.HANGUP, "terminating")
    assert not is_no_op(Action.HANGUP, "established")
    assert not is_no_op(Action.BYE, "terminated")


def test_state_never_goes_backwards() -> None:
    assert later_state("established", "establishing") == "established"
    assert later_state("establishing", "established") == "established"
    assert later_state("terminated", "terminating") == "terminated"
    assert later_state("initial", "initial") == "initial"
