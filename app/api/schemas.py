"""Pydantic models of the HTTP edge: responses, problems, webhook payloads.

Field names and values follow the public contract (API.md); the OpenAPI document and
the SDKs generated from it come from these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CallStateName = Literal["initial", "establishing", "established", "terminating", "terminated"]
DirectionName = Literal["outbound", "inbound"]
EndCauseName = Literal[
    "local_bye", "remote_bye", "canceled", "rejected", "no_answer", "failed", "shutdown"
]
EndedByName = Literal["local", "remote", "system"]
DeliveryStateName = Literal["pending", "delivered", "failed", "skipped"]
# tests/api/test_schemas.py checks that these words equal the stored enums.


EXAMPLE_CALL: dict[str, Any] = {
    "id": "call_3q2-Vb8kTnS0c1mXo4eRZA",
    "direction": "outbound",
    "state": "established",
    "from": "sip:alice@example.com",
    "to": "sip:bob@example.com",
    "local_identity": {"uri": "sip:alice@example.com", "display_name": "Alice"},
    "remote_identity": {"uri": "sip:bob@example.com", "display_name": None},
    "sip": {
        "call_id": "f81d4fae7dec11d0a76500a0c91e6bf6@192.0.2.10",
        "local_tag": "9fxced76sl",
        "remote_tag": "314159",
    },
    "last_response": {"code": 200, "reason": "OK"},
    "early_media": False,
    "hold": {"local": False, "remote": False},
    "end": None,
    "client_state": "order-42",
    "webhook_url": "https://app.example.com/callctl/events",
    "created_at": "2026-01-02T03:04:05.123456Z",
    "answered_at": "2026-01-02T03:04:09.500000Z",
    "ended_at": None,
    "request": None,
    "auto_provisional": None,
}


class Problem(BaseModel):
    """RFC 9457 problem details; every error response of this API has this shape."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:callctl:problem:call-not-found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "no call with id 'call_x'",
                    "call_id": "call_x",
                }
            ]
        },
    )

    type: str = Field(
        description="URI identifying the problem type; 'about:blank' when the status says it all.",
    )
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="The HTTP status code.", ge=400, le=599)
    detail: str = Field(description="What went wrong in this occurrence, for people.")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(
        description="Where: the request part ('body', 'query', 'path', 'header') then the field.",
        examples=[["query", "limit"]],
    )
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(description="Machine-readable kind of error.", examples=["less_than_equal"])


class ValidationProblem(Problem):
    """422: a parameter or body field is invalid; ``errors`` names each one."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:callctl:problem:invalid-request",
                    "title": "Unprocessable Content",
                    "status": 422,
                    "detail": "query.limit: Input should be less than or equal to 200",
                    "errors": [
                        {
                            "loc": ["query", "limit"],
                            "msg": "Input should be less than or equal to 200",
                            "type": "less_than_equal",
                        }
                    ],
                }
            ]
        }
    )

    errors: list[ValidationIssue] = Field(description="One entry per invalid field.")


class Identity(BaseModel):
    uri: str = Field(description="SIP URI of the party.", examples=["sip:alice@example.com"])
    display_name: str | None = Field(description="Display name, if any.", examples=["Alice"])


class SipDialogInfo(BaseModel):
    call_id: str = Field(description="SIP Call-ID of the INVITE.")
    local_tag: str = Field(description="Our tag (From tag outbound, To tag inbound).")
    remote_tag: str | None = Field(description="The far end's tag, once known.")


class LastResponse(BaseModel):
    code: int = Field(description="SIP status code.", ge=100, le=699, examples=[180])
    reason: str = Field(description="Reason phrase.", examples=["Ringing"])


class CallEnd(BaseModel):
    cause: EndCauseName = Field(description="Why the call ended.")
    sip_code: int | None = Field(description="SIP status that ended it (e.g. 486), if any.")
    reason: str = Field(description="Human-readable reason.")
    by: EndedByName = Field(description="Who ended it.")


class InboundRequest(BaseModel):
    """The INVITE of an inbound call as received (SIP.js ``Invitation.request``)."""

    uri: str = Field(description="Request-URI.")
    headers: dict[str, list[str]] = Field(description="Header fields by name, in order.")
    body: str | None = Field(description="Message body (usually SDP), if any.")
    content_type: str | None = Field(description="Content-Type of the body.")


class CallHold(BaseModel):
    """Hold as the last SDP offer/answer left it (RFC 3264 §8.4)."""

    local: bool = Field(description="We hold the far end (we offered sendonly or inactive).")
    remote: bool = Field(
        description="The far end holds us (it offered sendonly or inactive, e.g. in a re-INVITE)."
    )


class Call(BaseModel):
    """One SIP INVITE session of the user agent."""

    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [EXAMPLE_CALL]})

    id: str = Field(description="Opaque, URL-safe, made by the server.")
    direction: DirectionName
    state: CallStateName = Field(description="SIP.js SessionState; never goes backwards.")
    from_: str = Field(alias="from", description="From URI.")
    to: str = Field(description="To URI.")
    local_identity: Identity
    remote_identity: Identity
    sip: SipDialogInfo
    last_response: LastResponse | None = Field(
        description="Last SIP response sent (inbound) or received (outbound)."
    )
    early_media: bool = Field(description="True once an early media session exists.")
    hold: CallHold = Field(description="Hold state of the media session.")
    end: CallEnd | None = Field(description="Why and how the call ended; null until then.")
    client_state: str | None = Field(description="Opaque string from the client, echoed.")
    webhook_url: str | None = Field(description="Where this call's events go, if not default.")
    created_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    request: InboundRequest | None = Field(description="Inbound calls: the INVITE received.")
    auto_provisional: bool | None = Field(
        description="Inbound calls: whether 180 Ringing is sent automatically."
    )


class CallList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [EXAMPLE_CALL], "next_cursor": None}]}
    )

    data: list[Call] = Field(description="Calls, newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class DeliveryAttempt(BaseModel):
    """One HTTP attempt to deliver an event (a row of the attempt log)."""

    attempt: int = Field(description="1 for the first attempt.", ge=1)
    url: str = Field(description="Where it was POSTed.")
    status_code: int | None = Field(description="HTTP status of the answer; null if none came.")
    latency_ms: int | None = Field(description="Time to the answer, in milliseconds.")
    error: str | None = Field(description="Why no usable answer came (timeout, refused, ...).")
    response_excerpt: str | None = Field(description="The start of the answer's body.")
    attempted_at: datetime = Field(description="When the attempt was made (RFC 3339, UTC).")


class EventDelivery(BaseModel):
    state: DeliveryStateName = Field(
        description=(
            "pending: waiting for its first or next attempt; delivered: got a 2xx; "
            "failed: given up; skipped: no webhook URL applied."
        )
    )
    attempts: int = Field(description="Delivery attempts made so far.", ge=0)
    next_attempt_at: datetime | None = Field(description="When the next attempt is due.")
    delivered_at: datetime | None = Field(description="When a 2xx was received.")
    history: list[DeliveryAttempt] = Field(
        default_factory=list, description="Every attempt so far, oldest first."
    )


class CallEvent(BaseModel):
    """An event of a call as stored in the outbox, with its delivery status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "evt_Q1u6m0oW0nq2n5xH2d3x9A",
                    "type": "call.progress",
                    "created_at": "2026-01-02T03:04:06.000000Z",
                    "call_id": "call_3q2-Vb8kTnS0c1mXo4eRZA",
                    "sequence": 2,
                    "data": {"call": EXAMPLE_CALL, "sip_code": 180},
                    "delivery": {
                        "state": "delivered",
                        "attempts": 1,
                        "next_attempt_at": None,
                        "delivered_at": "2026-01-02T03:04:06.080000Z",
                    },
                }
            ]
        }
    )

    id: str
    type: str = Field(description="Event type, e.g. call.answered.")
    created_at: datetime
    call_id: str
    sequence: int = Field(description="1, 2, 3... per call, without gaps.", ge=1)
    data: dict[str, Any] = Field(description="The webhook's data object (holds `call`).")
    delivery: EventDelivery


class CallEventList(BaseModel):
    data: list[CallEvent] = Field(description="Events in sequence order.")
    has_more: bool = Field(
        description="More events follow: ask again with `after` = the last sequence."
    )


class Health(BaseModel):
    status: Literal["ok"]


class CheckResult(BaseModel):
    name: str = Field(examples=["database"])
    ok: bool
    detail: str | None = Field(default=None, description="Why the check failed.")


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: list[CheckResult]


class NotReadyProblem(Problem):
    checks: list[CheckResult]


# -- webhook payloads (documented in the OpenAPI `webhooks` section) --------------------


class CallData(BaseModel):
    call: Call = Field(description="The call as it is after the event.")


class ProgressData(CallData):
    sip_code: int = Field(description="Provisional status sent or received.", ge=100, le=199)


class DtmfData(CallData):
    digit: str = Field(description="One DTMF digit: 0-9, *, #, A-D.", pattern=r"^[0-9*#A-D]$")


class ReferData(CallData):
    sip_code: int = Field(description="Status of the transfer, from the NOTIFY sipfrag.")


class _EventEnvelope(BaseModel):
    id: str = Field(description="Event id; also the webhook-id header.")
    created_at: datetime
    call_id: str
    sequence: int = Field(description="1, 2, 3... per call, without gaps.", ge=1)


class CallInitiatedEvent(_EventEnvelope):
    """INVITE sent (outbound) or received (inbound)."""

    type: Literal["call.initiated"]
    data: CallData


class CallProgressEvent(_EventEnvelope):
    """A provisional response sent or received."""

    type: Literal["call.progress"]
    data: ProgressData


class CallEarlyMediaEvent(_EventEnvelope):
    """An early media session started."""

    type: Literal["call.early_media"]
    data: CallData


class CallAnsweredEvent(_EventEnvelope):
    """The session is established."""

    type: Literal["call.answered"]
    data: CallData


class CallDtmfEvent(_EventEnvelope):
    """A DTMF digit was received."""

    type: Literal["call.dtmf"]
    data: DtmfData


class CallReferEvent(_EventEnvelope):
    """Progress of a transfer (NOTIFY)."""

    type: Literal["call.refer"]
    data: ReferData


class CallEndedEvent(_EventEnvelope):
    """The call ended; ``data.call.end`` says why."""

    type: Literal["call.ended"]
    data: CallData
