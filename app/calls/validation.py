"""Checks of what clients ask the service to put on the wire (REST and webhook actions).

Shared by the HTTP schemas (app.api.action_schemas) and the webhook answer flow
(app.calls.answer_flow), so that both refuse the same things: URIs the SIP core cannot use,
header names that are not RFC 3261 tokens, values with CR/LF or other control characters
(header injection), and headers the user agent writes itself. Each check raises
``ValueError`` with a message fit for a 422.
"""

from __future__ import annotations

import re

from app.calls.commands import HeaderFields
from app.sip.errors import SipParseError
from app.sip.headers import is_token, normalize_name
from app.sip.uri import SipUri, parse_uri

# Ring time bounds, seconds: at least one second, at most an hour (a longer ring is a bug).
MIN_TIMEOUT = 1
MAX_TIMEOUT = 3600
MAX_URI_LENGTH = 2048
MAX_DISPLAY_NAME = 128
MAX_CLIENT_STATE = 4096
MAX_REASON = 128
MAX_CREDENTIAL = 256
# Extra headers: enough for any integration, small enough to keep INVITEs under the UDP
# MTU advice of RFC 3261 §18.1.1 in the common case.
MAX_HEADER_FIELDS = 32
MAX_HEADER_NAME = 64
MAX_HEADER_VALUE = 1024

# Headers the user agent writes or interprets itself: transaction and dialog identity
# (RFC 3261 §8.1.1), routing (§16, §20.30, §20.34), the body (§20.14/§20.15), auth (§22),
# and the extension negotiation it performs (RFC 3262 100rel: Require/Supported/RSeq/RAck).
UA_OWNED_HEADERS: frozenset[str] = frozenset(
    {
        "via",
        "call-id",
        "cseq",
        "from",
        "to",
        "contact",
        "max-forwards",
        "content-length",
        "content-type",
        "content-encoding",
        "route",
        "record-route",
        "rseq",
        "rack",
        "require",
        "supported",
        "allow",
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "authentication-info",
        "user-agent",
        "server",
    }
)
# RFC 3261 §25.1 TEXT-UTF8: any character but the controls (HTAB allowed in values).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_OR_TAB = re.compile(r"[\x00-\x1f\x7f]")

HeadersValue = dict[str, str | list[str]]


def no_controls(value: str, what: str, *, allow_tab: bool = False) -> str:
    pattern = _CONTROL if allow_tab else _CONTROL_OR_TAB
    if pattern.search(value):
        raise ValueError(f"{what} must not contain CR, LF or other control characters")
    return value


def check_sip_uri(value: str, what: str) -> str:
    """A ``sip:``/``sips:`` URI the SIP core can use as Request-URI or From."""
    value = no_controls(value.strip(), what)
    if any(ch in value for ch in ' <>"'):
        raise ValueError(f"{what} must be a bare SIP URI (no spaces, <, > or quotes)")
    try:
        uri = parse_uri(value)
    except SipParseError as exc:
        raise ValueError(f"{what} is not a valid SIP URI: {exc}") from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"{what} must be a sip: or sips: URI")
    if not uri.host:
        raise ValueError(f"{what} has no host")
    if uri.headers:
        raise ValueError(f"{what} must not carry URI headers ('?...'); use `headers`")
    return value


def check_headers(value: HeadersValue) -> HeadersValue:
    """Extra SIP headers a client may add: token names, no CR/LF, none the UA owns."""
    fields = 0
    for name, given in value.items():
        if len(name) > MAX_HEADER_NAME or not is_token(name):
            raise ValueError(f"{name!r} is not a valid SIP header name (RFC 3261 token)")
        key = normalize_name(name)
        if key in UA_OWNED_HEADERS:
            raise ValueError(f"{name!r} is set by the user agent and cannot be given")
        values = [given] if isinstance(given, str) else given
        if not values:
            raise ValueError(f"header {name!r} has an empty list of values")
        for item in values:
            if len(item) > MAX_HEADER_VALUE:
                raise ValueError(
                    f"header {name!r} has a value longer than {MAX_HEADER_VALUE} characters"
                )
            no_controls(item, f"header {name!r}", allow_tab=True)
        fields += len(values)
    if fields > MAX_HEADER_FIELDS:
        raise ValueError(f"at most {MAX_HEADER_FIELDS} header fields may be given")
    return value


def header_fields(value: HeadersValue) -> HeaderFields:
    """The validated object as (name, value) pairs in order; a list repeats the header."""
    out: list[tuple[str, str]] = []
    for name, given in value.items():
        for item in [given] if isinstance(given, str) else given:
            out.append((name, item))
    return tuple(out)
