"""Request bodies of the call actions (POST /v1/calls and /v1/calls/{id}/<action>).

Everything a client can put on the wire is checked here, so that a bad value is a 422 that
names the field and never a malformed SIP message: URIs are parsed with the SIP core's own
parser, extra header names must be RFC 3261 tokens, values must not contain CR/LF or other
control characters (header injection), and the headers the user agent writes itself
(Via, Call-ID, CSeq, From, To, Contact, ...) cannot be given.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from app.api.schemas import Problem
from app.calls import commands
from app.calls.validation import (
    MAX_CLIENT_STATE,
    MAX_CREDENTIAL,
    MAX_DISPLAY_NAME,
    MAX_HEADER_FIELDS,
    MAX_REASON,
    MAX_TIMEOUT,
    MAX_URI_LENGTH,
    MIN_TIMEOUT,
    HeadersValue,
    check_headers,
    check_sip_uri,
    header_fields,
    no_controls,
)

MAX_IDEMPOTENCY_KEY = 255
# Idempotency keys: visible ASCII (they travel in an HTTP header and are stored as is).
_KEY = re.compile(r"^[\x21-\x7e]+$")


def check_idempotency_key(value: str) -> str:
    if not _KEY.match(value):
        raise ValueError("must be visible ASCII characters only")
    return value


_HEADERS_DESCRIPTION = (
    'Extra SIP headers: `{"X-Name": "value"}`; a list of strings repeats the header. '
    "Names are RFC 3261 tokens; values must not contain CR, LF or control characters; "
    f"at most {MAX_HEADER_FIELDS} fields. Refused, because the user agent writes them: "
    "Via, Call-ID, CSeq, From, To, Contact, Max-Forwards, Content-Length, Content-Type, "
    "Content-Encoding, Route, Record-Route, RSeq, RAck, Require, Supported, Allow, "
    "Authorization, Proxy-Authorization, WWW-Authenticate, Proxy-Authenticate, "
    "Authentication-Info, User-Agent, Server, and their compact forms (v, i, f, t, m, l, c, "
    "e, k)."
)


# Extra SIP headers of a request body, checked once for every action (CR/LF, token names,
# headers the UA owns): a 422 naming the field.
CheckedHeaders = Annotated[HeadersValue, AfterValidator(check_headers)]


def _headers_field() -> Any:
    return Field(
        default_factory=dict,
        description=_HEADERS_DESCRIPTION,
        examples=[{"X-Account": "42", "P-Preferred-Identity": ["<sip:+15551234567@example.com>"]}],
    )


class _Body(BaseModel):
    # Unknown fields are refused: a typo ("timout") must not be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class DigestAuth(_Body):
    """Credentials used to answer a 401/407 digest challenge to the INVITE."""

    username: str = Field(min_length=1, max_length=MAX_CREDENTIAL, examples=["alice"])
    password: str = Field(min_length=1, max_length=MAX_CREDENTIAL, examples=["s3cret"])

    @field_validator("username", "password")
    @classmethod
    def _printable(cls, value: str) -> str:
        return no_controls(value, "the credential")


class DialRequest(_Body):
    """Place an outbound call (SIP.js ``new Inviter(); invite()``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "to": "sip:bob@example.com",
                    "from": "sip:alice@example.com",
                    "display_name": "Alice",
                    "headers": {"X-Account": "42"},
                    "timeout": 30,
                    "early_media": False,
                    "offer": "sdp",
                    "webhook_url": "https://app.example.com/callctl/events",
                    "client_state": "order-42",
                    "auth": {"username": "alice", "password": "s3cret"},
                }
            ]
        }
    )

    to: str = Field(
        max_length=MAX_URI_LENGTH,
        description="SIP URI to call (Request-URI and To).",
        examples=["sip:bob@example.com"],
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=MAX_URI_LENGTH,
        description="SIP URI for From; default: the service's own identity.",
        examples=["sip:alice@example.com"],
    )
    display_name: str | None = Field(
        default=None,
        max_length=MAX_DISPLAY_NAME,
        description="Display name in From.",
        examples=["Alice"],
    )
    headers: CheckedHeaders = _headers_field()
    timeout: int = Field(
        default=int(commands.DEFAULT_RING_TIMEOUT),
        ge=MIN_TIMEOUT,
        le=MAX_TIMEOUT,
        description="Ring seconds; then CANCEL and end cause `no_answer`.",
    )
    early_media: bool = Field(
        default=False,
        description=(
            "Start media on the first provisional answer (then the INVITE must not fork: "
            "a 2xx from another dialog ends the call `failed`)."
        ),
    )
    offer: Literal["sdp", "none"] = Field(
        default="sdp",
        description="`sdp`: INVITE with an offer. `none`: INVITE without SDP, answer in ACK.",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="http(s) URL for this call's events; default CALLCTL_WEBHOOK_URL.",
        examples=["https://app.example.com/callctl/events"],
    )
    client_state: str | None = Field(
        default=None,
        max_length=MAX_CLIENT_STATE,
        description="Opaque string echoed in the call object and every event.",
        examples=["order-42"],
    )
    auth: DigestAuth | None = Field(
        default=None, description="Answers one 401/407 challenge; never shown back."
    )

    @field_validator("to")
    @classmethod
    def _to(cls, value: str) -> str:
        return check_sip_uri(value, "to")

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        return None if value is None else check_sip_uri(value, "from")

    @field_validator("display_name")
    @classmethod
    def _display_name(cls, value: str | None) -> str | None:
        return None if value is None else no_controls(value, "display_name")

    @field_validator("client_state")
    @classmethod
    def _client_state(cls, value: str | None) -> str | None:
        return None if value is None else no_controls(value, "client_state", allow_tab=True)

    def to_command(self) -> commands.Dial:
        return commands.Dial(
            to=self.to,
            from_uri=self.from_,
            display_name=self.display_name,
            headers=header_fields(self.headers),
            timeout=float(self.timeout),
            early_media=self.early_media,
            offer=self.offer,
            webhook_url=self.webhook_url,
            client_state=self.client_state,
            auth=(
                commands.Auth(username=self.auth.username, password=self.auth.password)
                if self.auth is not None
                else None
            ),
        )


def _reason_field() -> Any:
    return Field(
        default=None,
        max_length=MAX_REASON,
        description="Reason phrase; default: the standard one for the code.",
    )


class ProgressRequest(_Body):
    """A provisional response to an inbound INVITE (SIP.js ``Invitation.progress()``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status_code": 183, "reliable": False, "early_media": True}]
        }
    )

    status_code: int = Field(default=commands.DEFAULT_PROGRESS_CODE, ge=101, le=199)
    reason: str | None = _reason_field()
    headers: CheckedHeaders = _headers_field()
    reliable: bool = Field(default=False, description="Send it reliably (RFC 3262 100rel/PRACK).")
    early_media: bool = Field(default=False, description="Put the SDP answer in it (early media).")

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        return None if value is None else no_controls(value, "reason", allow_tab=True)

    def to_command(self) -> commands.Progress:
        return commands.Progress(
            status_code=self.status_code,
            reason=self.reason,
            headers=header_fields(self.headers),
            reliable=self.reliable,
            early_media=self.early_media,
        )


class AcceptRequest(_Body):
    """Answer an inbound call with a 2xx (SIP.js ``Invitation.accept()``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"headers": {"X-Agent": "7"}}]})

    headers: CheckedHeaders = _headers_field()

    def to_command(self) -> commands.Accept:
        return commands.Accept(headers=header_fields(self.headers))


class RejectRequest(_Body):
    """Refuse an inbound call with a final non-2xx (SIP.js ``Invitation.reject()``)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status_code": 486, "reason": "Busy Here"}]}
    )

    status_code: int = Field(default=commands.DEFAULT_REJECT_CODE, ge=300, le=699)
    reason: str | None = _reason_field()
    headers: CheckedHeaders = _headers_field()

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        return None if value is None else no_controls(value, "reason", allow_tab=True)

    def to_command(self) -> commands.Reject:
        return commands.Reject(
            status_code=self.status_code, reason=self.reason, headers=header_fields(self.headers)
        )


class HangupRequest(_Body):
    """Optional body of cancel, bye and hangup."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"headers": {"X-Hangup-Cause": "agent"}}]}
    )

    headers: CheckedHeaders = _headers_field()

    def to_command(self) -> commands.Hangup:
        return commands.Hangup(headers=header_fields(self.headers))


class InvalidStateProblem(Problem):
    """409: the action is not allowed in the call's current state or direction."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:callctl:problem:invalid-state",
                    "title": "Conflict",
                    "status": 409,
                    "detail": "bye is not allowed on an outbound call in state establishing",
                    "state": "establishing",
                    "allowed_actions": ["cancel", "hangup"],
                }
            ]
        }
    )

    state: Literal["initial", "establishing", "established", "terminating", "terminated"] = Field(
        description="The call's state when the action was refused."
    )
    allowed_actions: list[str] = Field(
        description="Actions the call allows now.", examples=[["cancel", "hangup"]]
    )
