"""/v1/calls actions: dial, and progress/accept/reject/cancel/bye/hangup on a call.

Thin: validate the body (app.api.action_schemas), hand it to the CallService, return the
call as it is once the action was handed to the user agent. The 409 rules live in the
service (app.calls.rules).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request, Response

from app.api.action_schemas import (
    MAX_IDEMPOTENCY_KEY,
    AcceptRequest,
    DialRequest,
    HangupRequest,
    InvalidStateProblem,
    ProgressRequest,
    RejectRequest,
    check_idempotency_key,
)
from app.api.auth import require_api_key
from app.api.calls import CallIdPath
from app.api.responses import INVALID, NOT_FOUND, UNAUTHORIZED, ResponseSpec
from app.api.schemas import Call, Problem
from app.calls.service import CallService
from app.errors import InvalidRequestError, ServiceUnavailableError
from app.settings import Settings
from app.webhooks.urls import InvalidWebhookUrlError, check_webhook_url

router = APIRouter(
    prefix="/v1",
    tags=["calls"],
    dependencies=[Depends(require_api_key)],
    responses=UNAUTHORIZED,
)

CONFLICT: ResponseSpec = {
    409: {
        "model": InvalidStateProblem,
        "description": (
            "Not allowed in the call's current state or direction; nothing was sent. "
            "`state` and `allowed_actions` say what is possible now."
        ),
    }
}
BODY_INVALID: ResponseSpec = {
    422: {
        **INVALID[422],
        "description": "A body field or parameter is invalid; `errors` names each one.",
    }
}
UNAVAILABLE: ResponseSpec = {
    503: {"model": Problem, "description": "SIP or the database is not running right now."}
}
ACTION_RESPONSES: ResponseSpec = {**NOT_FOUND, **CONFLICT, **BODY_INVALID, **UNAVAILABLE}
DIAL_UNAVAILABLE: ResponseSpec = {
    503: {
        "model": Problem,
        "description": (
            "No call was placed and nothing was written: SIP or the database is not running, "
            "the service is draining, or it sheds new calls (type "
            "`urn:callctl:problem:overloaded`, `reason` `overload` or `max_calls`: "
            "`CALLCTL_MAX_CALLS` calls are up), when `Retry-After` says when to try again."
        ),
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before dialing again (sent when calls are shed).",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
}


# async: FastAPI runs a plain ``def`` dependency in a worker thread, one thread hop per
# request for an attribute read.
async def get_call_service(request: Request) -> CallService:
    service: CallService | None = getattr(request.app.state, "call_service", None)
    if service is None:
        raise ServiceUnavailableError("the call service is not running (starting or stopping)")
    return service


ServiceDep = Annotated[CallService, Depends(get_call_service)]


def _check_webhook_url(settings: Settings, url: str | None) -> None:
    if url is None:
        return
    allow_private = bool(settings.webhook_allow_private)
    try:
        check_webhook_url(url, allow_private=allow_private)
    except InvalidWebhookUrlError as exc:
        issue = {"loc": ["body", "webhook_url"], "msg": str(exc), "type": "webhook_url"}
        raise InvalidRequestError(f"body.webhook_url: {exc}", errors=[issue]) from None


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_idempotency_key(value)
    except ValueError as exc:
        issue = {"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "value_error"}
        raise InvalidRequestError(f"header.Idempotency-Key: {exc}", errors=[issue]) from None


def _call(resource: dict[str, Any]) -> Call:
    return Call.model_validate(resource)


def _call_response(resource: dict[str, Any], status_code: int) -> Response:
    """The call as JSON, checked against the model once (what the generic path would send
    for ``response_model=Call``, without validating it a second time)."""
    content = Call.__pydantic_serializer__.to_json(_call(resource), by_alias=True)
    return Response(content=content, media_type="application/json", status_code=status_code)


async def dial_response(
    service: CallService, settings: Settings, body: DialRequest, idempotency_key: str | None
) -> Response:
    """Dial (the route's work once the request is validated); also used by
    :class:`app.api.fast_dial.DialFastPath`."""
    _check_webhook_url(settings, body.webhook_url)
    key = _idempotency_key(idempotency_key)
    result = await service.dial(body.to_command(), idempotency_key=key)
    return _call_response(result.call, 201 if result.created else 200)


@router.post(
    "/calls",
    operation_id="createCall",
    summary="Dial: place an outbound call",
    description=(
        "Sends an INVITE to `to` (SIP.js `new Inviter(); invite()`) and returns the call "
        "(201). Its progress arrives as webhooks: `call.initiated`, `call.progress`, "
        "`call.early_media`, `call.answered`, `call.ended`.\n\n"
        "With an `Idempotency-Key` header, a retry with the same key and the same body "
        "returns the first call (200) instead of dialing again; the same key with another "
        "body is refused (422).\n\n"
        "Under overload, or with `CALLCTL_MAX_CALLS` calls up, new calls are refused with a "
        "503 problem and a `Retry-After` header; calls already placed go on."
    ),
    status_code=201,
    response_model=Call,
    responses={
        200: {"model": Call, "description": "Idempotent replay: the call the key made first."},
        **BODY_INVALID,
        **DIAL_UNAVAILABLE,
    },
)
async def create_call(
    request: Request,
    service: ServiceDep,
    body: DialRequest,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY,
            description=(
                "Any unique string (e.g. a UUID). The same key with the same body returns "
                "the first call; with another body, 422."
            ),
            examples=["3f1c6a0e-5b8e-4a53-9d55-0a8f6c1d2e7b"],
        ),
    ] = None,
) -> Response:
    return await dial_response(service, request.app.state.settings, body, idempotency_key)


@router.post(
    "/calls/{call_id}/progress",
    operation_id="progressCall",
    summary="Send a provisional response (inbound)",
    description=(
        "Inbound calls, before accept: sends a 1xx (default 180). `reliable` uses 100rel "
        "and PRACK; `early_media` puts the SDP answer in it. SIP.js `Invitation.progress()`."
    ),
    response_model=Call,
    responses=ACTION_RESPONSES,
)
async def progress_call(
    service: ServiceDep,
    call_id: CallIdPath,
    body: Annotated[ProgressRequest | None, Body()] = None,
) -> Call:
    command = (body or ProgressRequest()).to_command()
    return _call(await service.progress(call_id, command))


@router.post(
    "/calls/{call_id}/accept",
    operation_id="acceptCall",
    summary="Answer an inbound call",
    description=(
        "Inbound calls: sends the 2xx with the SDP answer (or the offer, when the INVITE "
        "had none). The call is established when the ACK arrives (`call.answered`). "
        "SIP.js `Invitation.accept()`."
    ),
    response_model=Call,
    responses=ACTION_RESPONSES,
)
async def accept_call(
    service: ServiceDep,
    call_id: CallIdPath,
    body: Annotated[AcceptRequest | None, Body()] = None,
) -> Call:
    command = (body or AcceptRequest()).to_command()
    return _call(await service.accept(call_id, command))


@router.post(
    "/calls/{call_id}/reject",
    operation_id="rejectCall",
    summary="Refuse an inbound call",
    description=(
        "Inbound calls, until the 2xx is sent: a final 3xx-6xx (default 480). "
        "SIP.js `Invitation.reject()`."
    ),
    response_model=Call,
    responses=ACTION_RESPONSES,
)
async def reject_call(
    service: ServiceDep,
    call_id: CallIdPath,
    body: Annotated[RejectRequest | None, Body()] = None,
) -> Call:
    command = (body or RejectRequest()).to_command()
    return _call(await service.reject(call_id, command))


@router.post(
    "/calls/{call_id}/cancel",
    operation_id="cancelCall",
    summary="Cancel an outbound call before it is answered",
    description=(
        "Outbound calls, before a final response: sends CANCEL; the call ends `canceled` "
        "when the 487 arrives. SIP.js `Inviter.cancel()`."
    ),
    response_model=Call,
    responses=ACTION_RESPONSES,
)
async def cancel_call(
    service: ServiceDep,
    call_id: CallIdPath,
    body: Annotated[HangupRequest | None, Body()] = None,
) -> Call:
    command = (body or HangupRequest()).to_command()
    return _call(await service.cancel(call_id, command))


@router.post(
    "/calls/{call_id}/bye",
    operation_id="byeCall",
    summary="End an established call",
    description=(
        "Established calls: sends BYE; the call is `terminating` until the BYE is "
        "answered, then `call.ended` (`local_bye`). SIP.js `Session.bye()`."
    ),
    response_model=Call,
    responses=ACTION_RESPONSES,
)
async def bye_call(
    service: ServiceDep,
    call_id: CallIdPath,
    body: Annotated[HangupRequest | None, Body()] = None,
) -> Call:
    command = (body or HangupRequest()).to_command()
    return _call(await service.bye(call_id, command))


@router.post(
    "/calls/{call_id}/hangup",
    operation_id="hangupCall",
    summary="End a call whatever its state",
    description=(
        "Whichever of cancel, reject or bye fits the call's state; a no-op (200) on a call "
        "that is already terminating or terminated."
    ),
    response_model=Call,
    responses=ACTION_RESPONSES,
)
async def hangup_call(
    service: ServiceDep,
    call_id: CallIdPath,
    body: Annotated[HangupRequest | None, Body()] = None,
) -> Call:
    command = (body or HangupRequest()).to_command()
    return _call(await service.hangup(call_id, command))
