"""The webhook requests callctl sends, declared for the OpenAPI ``webhooks`` section.

These operations are never served: they document what a receiver gets, so that
generated SDKs have typed event payloads and the signing headers.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header
from pydantic import BaseModel

from app.api.schemas import (
    CallAnsweredEvent,
    CallDtmfEvent,
    CallEarlyMediaEvent,
    CallEndedEvent,
    CallInitiatedEvent,
    CallProgressEvent,
    CallReferEvent,
)

# (event type, payload model, operationId, summary)
WEBHOOK_EVENTS: tuple[tuple[str, type[BaseModel], str, str], ...] = (
    ("call.initiated", CallInitiatedEvent, "callInitiatedWebhook", "INVITE sent or received"),
    ("call.progress", CallProgressEvent, "callProgressWebhook", "Provisional response"),
    ("call.early_media", CallEarlyMediaEvent, "callEarlyMediaWebhook", "Early media started"),
    ("call.answered", CallAnsweredEvent, "callAnsweredWebhook", "Session established"),
    ("call.dtmf", CallDtmfEvent, "callDtmfWebhook", "DTMF digit received"),
    ("call.refer", CallReferEvent, "callReferWebhook", "Transfer progress"),
    ("call.ended", CallEndedEvent, "callEndedWebhook", "Call ended"),
)

_DESCRIPTION = (
    "POSTed to the call's `webhook_url`, else to `CALLCTL_WEBHOOK_URL`. Signed per the "
    "Standard Webhooks specification when `CALLCTL_WEBHOOK_SECRET` is set. Delivery is at "
    "least once and in order per call; non-2xx answers and timeouts are retried with "
    "backoff; 410 stops retries for that URL."
)
_INITIATED_NOTE = (
    " For an inbound call, a 2xx answer to `call.initiated` may carry one action or a "
    'list, run in order as if called by REST: `{"action": "accept"}`, '
    '`[{"action": "progress", "status_code": 183, "early_media": true}, '
    '{"action": "accept"}]`. An empty or non-JSON body means no action.'
)

_HEADERS: tuple[tuple[str, str], ...] = (
    ("webhook_id", "webhook-id: the event id (deduplicate on it)."),
    ("webhook_timestamp", "webhook-timestamp: unix seconds when this attempt was signed."),
    (
        "webhook_signature",
        "webhook-signature: 'v1,' + base64 HMAC-SHA256 of 'id.timestamp.body' "
        "(only with CALLCTL_WEBHOOK_SECRET).",
    ),
)


def _endpoint(model: type[BaseModel]) -> Callable[..., Awaitable[None]]:
    async def receive(**_: Any) -> None:
        """Documentation only; never called."""

    parameters = [
        inspect.Parameter(
            "event",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[model, Body()],
        )
    ]
    for name, description in _HEADERS:
        alias = name.replace("_", "-")
        required = name != "webhook_signature"
        parameters.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[
                    str if required else str | None,
                    Header(alias=alias, description=description),
                ],
                default=inspect.Parameter.empty if required else None,
            )
        )
    receive.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return receive


def register_webhook_docs(router: APIRouter) -> None:
    for event_type, model, operation_id, summary in WEBHOOK_EVENTS:
        description = _DESCRIPTION + (_INITIATED_NOTE if event_type == "call.initiated" else "")
        router.add_api_route(
            event_type,
            _endpoint(model),
            methods=["POST"],
            operation_id=operation_id,
            summary=summary,
            description=description,
            tags=["webhooks"],
            status_code=200,
            responses={
                200: {"description": "Received (any 2xx). Other statuses are retried."},
                410: {"description": "Gone: no further deliveries to this URL."},
            },
        )
