"""The API's literal words equal the values the store keeps; resources validate."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, get_args

import pytest

from app.api import schemas
from app.api.webhook_docs import WEBHOOK_EVENTS
from app.store.models import (
    Call,
    CallState,
    DeliveryState,
    Direction,
    EndCause,
    EndedBy,
    EventType,
)
from app.store.resources import call_resource


@pytest.mark.parametrize(
    ("literal", "enum"),
    [
        (schemas.CallStateName, CallState),
        (schemas.DirectionName, Direction),
        (schemas.EndCauseName, EndCause),
        (schemas.EndedByName, EndedBy),
        (schemas.DeliveryStateName, DeliveryState),
    ],
)
def test_literals_equal_stored_values(literal: Any, enum: type[StrEnum]) -> None:
    assert set(get_args(literal)) == {member.value for member in enum}


def test_every_event_type_has_a_documented_webhook() -> None:
    assert [event_type for event_type, *_ in WEBHOOK_EVENTS] == [t.value for t in EventType]


def test_example_call_is_a_valid_call() -> None:
    call = schemas.Call.model_validate(schemas.EXAMPLE_CALL)
    assert call.model_dump(by_alias=True, mode="json") == schemas.EXAMPLE_CALL


def test_call_resource_validates_as_the_schema(call_factory: Callable[..., Call]) -> None:
    for direction in ("outbound", "inbound"):
        resource = call_resource(call_factory(direction=direction))
        model = schemas.Call.model_validate(resource)
        assert model.model_dump(by_alias=True, mode="json")["from"] == resource["from"]
