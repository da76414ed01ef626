"""The dial's response: the call serialized once, exactly as ``response_model=Call`` would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.api.actions import _call_response
from app.api.schemas import Call
from app.store.resources import call_resource


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"state": "establishing", "last_response_code": 180, "last_response_reason": "Ringing"},
        {"direction": "inbound", "remote_display_name": 'Zoë "Z" Ünïcode ☎'},
        {
            "state": "terminated",
            "end_cause": "rejected",
            "end_by": "remote",
            "end_sip_code": 486,
            "client_state": "tab\there",
            "webhook_url": "https://hooks.example.com/x",
        },
    ],
)
async def test_call_response_is_what_response_model_would_send(
    call_factory: Callable[..., Any], overrides: dict[str, Any]
) -> None:
    """The dial's pre-serialized body and headers equal FastAPI's ``response_model=Call``."""
    resource = call_resource(call_factory(**overrides))
    reference = FastAPI()

    @reference.post("/call", response_model=Call, status_code=201)
    async def answer() -> Call:
        return Call.model_validate(resource)

    transport = httpx.ASGITransport(app=reference)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        expected = await client.post("/call")
    ours = _call_response(resource, 201)
    assert ours.status_code == expected.status_code == 201
    assert bytes(ours.body) == expected.content
    assert ours.headers["content-type"] == expected.headers["content-type"]
    assert ours.headers["content-length"] == expected.headers["content-length"]
