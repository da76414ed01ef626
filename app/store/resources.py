"""The public JSON shape of stored rows (the call object and the event envelope).

Shared by the REST API and the webhook payloads, which must show a call identically;
plain dicts of JSON types, so that the outbox can store them as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.store.models import Call, CallEvent, CallRecord, Direction


def rfc3339(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z`` (``2026-01-02T03:04:05.123456Z``)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def call_resource(call: Call | CallRecord) -> dict[str, Any]:
    """The call object of the public API (API.md, "Call object")."""
    resource: dict[str, Any] = {
        "id": call.id,
        "direction": call.direction,
        "state": call.state,
        "from": call.from_uri,
        "to": call.to_uri,
        "local_identity": {"uri": call.local_uri, "display_name": call.local_display_name},
        "remote_identity": {"uri": call.remote_uri, "display_name": call.remote_display_name},
        "sip": {
            "call_id": call.sip_call_id,
            "local_tag": call.local_tag,
            "remote_tag": call.remote_tag,
        },
        "last_response": (
            None
            if call.last_response_code is None
            else {"code": call.last_response_code, "reason": call.last_response_reason or ""}
        ),
        "early_media": call.early_media,
        "hold": {"local": bool(call.local_hold), "remote": bool(call.remote_hold)},
        "end": (
            None
            if call.end_cause is None
            else {
                "cause": call.end_cause,
                "sip_code": call.end_sip_code,
                "reason": call.end_reason or call.end_cause,
                "by": call.end_by,
            }
        ),
        "client_state": call.client_state,
        "webhook_url": call.webhook_url,
        "created_at": rfc3339(call.created_at),
        "answered_at": rfc3339(call.answered_at),
        "ended_at": rfc3339(call.ended_at),
        "request": None,
        "auto_provisional": None,
    }
    if call.direction == Direction.INBOUND.value:
        resource["request"] = {
            "uri": call.request_uri,
            "headers": call.request_headers or {},
            "body": call.request_body,
            "content_type": call.request_content_type,
        }
        resource["auto_provisional"] = call.auto_provisional
    return resource


def event_resource(event: CallEvent) -> dict[str, Any]:
    """The webhook envelope of an outbox event (API.md, "Webhooks")."""
    return {
        "id": event.id,
        "type": event.type,
        "created_at": rfc3339(event.created_at),
        "call_id": event.call_id,
        "sequence": event.sequence,
        "data": event.payload,
    }
