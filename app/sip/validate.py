"""Checks a UAS makes before handing a request to a transaction user (RFC 3261 §8.2).

:func:`validate_request` answers "can this request be processed?" with ``None`` (yes)
or the :class:`Response` to send. :func:`can_answer` and :func:`salvage_request` tell
whether a broken request can be answered at all: a response needs a Via to travel and
From, To, Call-ID and CSeq to be matched by the client (§8.2.6.2); without them, and
always for ACK (which gets no response, §17), the request is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.sip.errors import SipParseError
from app.sip.headers import is_token, parse_cseq, parse_via
from app.sip.message import Headers, Request, Response, _Field, make_response
from app.sip.reasons import reason_phrase
from app.sip.uri import SipUri

__all__ = [
    "KNOWN_METHODS",
    "MANDATORY_HEADERS",
    "can_answer",
    "salvage_request",
    "validate_request",
]

# Methods of RFC 3261 and the extensions in common use. A method we know but do not
# allow gets 405, any other 501 (§8.2.1, §21.4.6, §21.5.2).
KNOWN_METHODS = frozenset(
    {
        "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER",  # RFC 3261
        "PRACK",  # RFC 3262
        "SUBSCRIBE", "NOTIFY",  # RFC 6665
        "UPDATE",  # RFC 3311
        "MESSAGE",  # RFC 3428
        "INFO",  # RFC 6086
        "REFER",  # RFC 3515
        "PUBLISH",  # RFC 3903
    }
)

# RFC 3261 §8.1.1: every request carries these. Max-Forwards is also mandatory for the
# UAC (§8.1.1.6), but a UAS tolerates its absence: the field only limits forwarding,
# which a UA does not do, and RFC 2543 peers omit it (RFC 4475 §3.4.2).
MANDATORY_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
# §7.3.1: these may appear once only.
_SINGLE_HEADERS = ("From", "To", "Call-ID", "CSeq", "Max-Forwards")
# Methods whose Contact (and Record-Route) the UA uses to build or refresh a dialog
# (§12.1.1, §12.2.2; RFC 3311, RFC 6665, RFC 3515).
_TARGET_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
_DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
# §8.2.2.3: Require is not checked on ACK and CANCEL.
_NO_REQUIRE_CHECK = frozenset({"ACK", "CANCEL"})
_URI_SCHEMES = frozenset({"sip", "sips", "tel"})


def _bad(req: Request, why: str) -> Response:
    return make_response(req, 400, f"Bad Request ({why})")


def validate_request(
    req: Request,
    *,
    allowed_methods: Iterable[str],
    supported: Iterable[str],
    accepted_content_types: Iterable[str] | None = None,
) -> Response | None:
    """RFC 3261 §8.2 checks of a UAS. Returns None to accept, else the response to send.

    For an ACK a non-None result means "drop it": ACK is never answered (§17).
    ``accepted_content_types`` (e.g. ``("application/sdp",)``) enables the §8.2.3
    check (415 with Accept); None skips it.

    Max-Forwards: 0 is accepted. §16.3 step 3 (483) binds elements that forward; a UA is
    the request's final recipient and processes it (RFC 4475 §3.3.12). A Max-Forwards
    that does not parse is still a 400.
    """
    allowed = tuple(allowed_methods)
    method = req.method

    # SIP-Version (§7.1, §21.5.6).
    if req.version.upper() != "SIP/2.0":
        return make_response(req, 505, reason_phrase(505))

    # Mandatory header fields, present once and well-formed (§8.1.1, §7.3.1).
    h = req.headers
    missing = [name for name in MANDATORY_HEADERS if name not in h]
    if missing:
        what = ", ".join(missing)
        return _bad(req, f"Missing {what} header{'s' if len(missing) > 1 else ''}")
    for name in _SINGLE_HEADERS:
        if h.count(name) > 1:
            return _bad(req, f"More than one {name} header")
    for name, view in (
        ("Via", lambda: req.vias),
        ("From", lambda: req.from_),
        ("To", lambda: req.to),
        ("Call-ID", lambda: req.call_id),
        ("CSeq", lambda: req.cseq),
        ("Max-Forwards", lambda: req.max_forwards),
    ):
        try:
            view()
        except SipParseError:
            return _bad(req, f"Malformed {name} header")
    if req.cseq.method != method:
        # §8.2 / RFC 4475 §3.1.2.11: the CSeq method must be the request's method.
        return _bad(req, "CSeq method does not match")

    # Request-URI syntax (§19.1.1: a Request-URI carries no headers).
    try:
        ruri = req.parsed_uri()
    except SipParseError:
        return _bad(req, "Malformed Request-URI")
    if isinstance(ruri, SipUri) and ruri.headers:
        return _bad(req, "Request-URI must not contain headers")

    # §8.2.1 Method inspection.
    if method not in allowed:
        if method == "ACK":
            return _bad(req, "ACK not expected")  # dropped by the caller: no response
        code = 405 if method in KNOWN_METHODS else 501
        resp = make_response(req, code)
        resp.headers.add("Allow", ", ".join(allowed))
        return resp

    # §8.2.2.1 To and Request-URI: a scheme we do not understand gets 416.
    scheme = ruri.scheme.lower()
    if scheme not in _URI_SCHEMES:
        return make_response(req, 416)

    # Contact / Record-Route are needed to build and refresh dialogs (§12.1.1).
    if method in _TARGET_METHODS:
        try:
            contacts = req.contacts
        except SipParseError:
            return _bad(req, "Malformed Contact header")
        if method in _DIALOG_CREATING and len(contacts) > 1:
            return _bad(req, "More than one Contact")
    if method in _DIALOG_CREATING:
        try:
            req.record_routes  # noqa: B018 - parsed for its errors
        except SipParseError:
            return _bad(req, "Malformed Record-Route header")

    # §8.2.2.3 Require.
    if method not in _NO_REQUIRE_CHECK:
        known = {s.lower() for s in supported}
        try:
            required = h.get_list("Require")
        except SipParseError:
            return _bad(req, "Malformed Require header")
        if not all(is_token(opt) for opt in required):
            return _bad(req, "Malformed Require header")
        unknown = [opt for opt in required if opt.lower() not in known]
        if unknown:
            resp = make_response(req, 420)
            resp.headers.add("Unsupported", ", ".join(unknown))
            return resp

    # §8.2.3 Content processing.
    if accepted_content_types is not None and method != "ACK" and (req.body or req.content_type):
        accepted = tuple(accepted_content_types)
        ctype = (req.content_type or "").split(";", 1)[0].strip().lower()
        if ctype not in {a.lower() for a in accepted}:
            resp = make_response(req, 415)
            resp.headers.add("Accept", ", ".join(accepted))
            return resp
    return None


def can_answer(req: Request) -> bool:
    """True if a response to ``req`` can be built and routed (§8.2.6.2, §18.2.2).

    Needs a parseable top Via, From, To, Call-ID and a parseable CSeq; ACK is never
    answered.
    """
    if req.method == "ACK":
        return False
    h = req.headers
    if not all(name in h for name in MANDATORY_HEADERS):
        return False
    try:
        req.top_via  # noqa: B018 - parsed for its errors
        cseq = req.cseq
    except SipParseError:
        return False
    return cseq.method != "ACK"


def salvage_request(data: bytes) -> Request | None:
    """For a datagram that failed to parse: a minimal :class:`Request` holding the
    fields needed to answer it (top Via, From, To, Call-ID, CSeq), or None when it
    cannot be answered (a response, an ACK, or those fields missing/unparseable).

    Use with ``make_response(salvaged, err.status_hint, ...)``.
    """
    try:
        return _salvage(data)
    except SipParseError:
        return None


_SALVAGE_KEYS = {
    "via": "Via", "v": "Via",
    "from": "From", "f": "From",
    "to": "To", "t": "To",
    "call-id": "Call-ID", "i": "Call-ID",
    "cseq": "CSeq",
}


def _salvage(data: bytes) -> Request | None:
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    text = head.decode("utf-8", "replace").lstrip("\r\n")
    lines = text.replace("\r\n", "\n").split("\n")
    first = lines[0]
    if first[:4].upper() == "SIP/":
        return None  # a response is never answered
    words = first.split()
    method = words[0] if words and is_token(words[0]) else None
    uri = words[1] if len(words) > 1 else "sip:invalid"
    skip = 1
    if first.partition(":")[0].strip().lower() in _SALVAGE_KEYS:
        skip = 0  # no start line at all: the first line is already a header field
        method = None
        uri = "sip:invalid"
    collected: list[list[str]] = []
    for line in lines[skip:501]:
        if line[:1] in (" ", "\t"):
            if collected:
                collected[-1][1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        canon = _SALVAGE_KEYS.get(name.strip().lower())
        if colon and canon is not None:
            collected.append([canon, value.strip()])
    fields: list[_Field] = []
    seen: set[str] = set()
    for canon, value in collected:
        if "\r" in value or "\x00" in value:
            return None
        if canon != "Via":
            if canon in seen:
                return None  # two From/To/...: we cannot tell which to echo
            seen.add(canon)
        fields.append((canon, canon.lower(), value, None))
    if seen != {"From", "To", "Call-ID", "CSeq"} or not any(f[0] == "Via" for f in fields):
        return None
    top_via = next(f[2] for f in fields if f[0] == "Via")
    parse_via(top_via.split(",", 1)[0])
    cseq = parse_cseq(next(f[2] for f in fields if f[0] == "CSeq"))
    if method is None:
        method = cseq.method
    if method == "ACK" or cseq.method == "ACK":
        return None
    return Request(method=method, uri=uri, headers=Headers._from_fields(fields))
