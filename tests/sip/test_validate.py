"""validate_request (RFC 3261 §8.2), can_answer and salvage_request."""

from __future__ import annotations

import pytest

from app.sip.message import Request, Response, make_response
from app.sip.parser import parse_message
from app.sip.validate import can_answer, salvage_request, validate_request

ALLOWED = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "PRACK", "UPDATE", "REFER",
           "NOTIFY")
SUPPORTED = ("100rel", "replaces", "timer")

BASE = [
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9",
    "Max-Forwards: 70",
    "From: <sip:alice@example.com>;tag=9fxced76sl",
    "To: <sip:bob@example.com>",
    "Call-ID: 3848276298220188511@example.com",
    "CSeq: 1 {m}",
    "Contact: <sip:alice@192.0.2.1>",
]


def build(
    method: str = "OPTIONS",
    *,
    uri: str = "sip:bob@example.com",
    version: str = "SIP/2.0",
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
    body: bytes = b"",
) -> Request:
    lines = [f"{method} {uri} {version}"]
    for line in BASE:
        name = line.split(":", 1)[0]
        if name in drop:
            continue
        if replace and name in replace:
            line = f"{name}: {replace[name]}"
        lines.append(line.format(m=method))
    lines.extend(extra)
    lines.append(f"Content-Length: {len(body)}")
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert isinstance(msg, Request)
    return msg


def check(req: Request, accepted_content_types: tuple[str, ...] | None = None) -> Response | None:
    return validate_request(
        req,
        allowed_methods=ALLOWED,
        supported=SUPPORTED,
        accepted_content_types=accepted_content_types,
    )


def expect(req: Request, status: int, reason: str | None = None) -> Response:
    resp = check(req)
    assert resp is not None
    assert resp.status == status, (resp.status, resp.reason)
    if reason is not None:
        assert resp.reason == reason
    # §8.2.6.2: the response echoes the request's identifiers
    if status != 400 or not any(h not in req.headers for h in ("To", "Via")):
        assert resp.headers.get("Via") == req.headers.get("Via")
    return resp


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS", "BYE", "ACK", "CANCEL", "NOTIFY"])
def test_good_requests_are_accepted(method: str) -> None:
    assert check(build(method)) is None


def test_tel_and_sips_request_uris_are_accepted() -> None:
    assert check(build(uri="tel:+15551234567")) is None
    assert check(build(uri="sips:bob@example.com")) is None


@pytest.mark.parametrize("header", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(header: str) -> None:
    expect(build(drop=(header,)), 400, f"Bad Request (Missing {header} header)")


def test_several_missing_headers_are_all_named() -> None:
    expect(build(drop=("From", "To", "Call-ID")), 400,
           "Bad Request (Missing From, To, Call-ID headers)")


def test_missing_max_forwards_is_tolerated() -> None:
    # RFC 3261 §8.1.1.6 binds the UAC; a UAS accepts RFC 2543-style requests without it.
    assert check(build(drop=("Max-Forwards",))) is None


@pytest.mark.parametrize("method", ["OPTIONS", "INVITE", "BYE"])
def test_max_forwards_zero_is_processed_by_a_ua(method: str) -> None:
    # §16.3's 483 is for elements that forward; a UA is the final recipient.
    assert check(build(method, replace={"Max-Forwards": "0"})) is None


@pytest.mark.parametrize("header", ["From", "To", "Call-ID", "CSeq", "Max-Forwards"])
def test_duplicated_single_headers(header: str) -> None:
    value = {"From": "<sip:x@example.com>;tag=2", "To": "<sip:y@example.com>",
             "Call-ID": "other", "CSeq": "1 OPTIONS", "Max-Forwards": "70"}[header]
    why = f"Bad Request (More than one {header} header)"
    expect(build(extra=(f"{header}: {value}",)), 400, why)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Via", "SIP/2.0/UDP"),
        ("Via", "SIP/2.0/UDP 192.0.2.15;;,;,,"),
        ("From", '"unterminated <sip:a@b>;tag=1'),
        ("To", "< sip:t.watson@example.org >"),
        ("Call-ID", "has space"),
        ("CSeq", "4294967296 OPTIONS"),
        ("CSeq", "OPTIONS"),
        ("Max-Forwards", "300"),
    ],
)
def test_malformed_mandatory_header(header: str, value: str) -> None:
    expect(build(replace={header: value}), 400, f"Bad Request (Malformed {header} header)")


def test_cseq_method_mismatch() -> None:
    expect(build(replace={"CSeq": "1 INVITE"}), 400, "Bad Request (CSeq method does not match)")


def test_version_not_supported() -> None:
    expect(build(version="SIP/7.0"), 505, "Version Not Supported")
    assert check(build(version="sip/2.0")) is None  # the literal is case-insensitive


@pytest.mark.parametrize("uri", ["http://example.com/", "nobodyKnowsThisScheme:opaque",
                                 "soap.beep://192.0.2.103:3002"])
def test_unsupported_uri_scheme(uri: str) -> None:
    expect(build(uri=uri), 416, "Unsupported URI Scheme")


@pytest.mark.parametrize("uri", ["<sip:bob@example.com>", "sip:bob@2001:db8::1",
                                 "sip:bob@example.com:99999"])
def test_malformed_request_uri(uri: str) -> None:
    expect(build(uri=uri), 400, "Bad Request (Malformed Request-URI)")


def test_request_uri_with_headers() -> None:
    expect(build(uri="sip:bob@example.com?Route=%3Csip:example.com%3E"), 400,
           "Bad Request (Request-URI must not contain headers)")


def test_unknown_method_501_with_allow() -> None:
    resp = expect(build("NEWMETHOD"), 501, "Not Implemented")
    assert resp.headers.get("Allow") == ", ".join(ALLOWED)


@pytest.mark.parametrize("method", ["REGISTER", "MESSAGE", "SUBSCRIBE", "PUBLISH"])
def test_known_but_not_allowed_405_with_allow(method: str) -> None:
    resp = expect(build(method), 405, "Method Not Allowed")
    assert resp.headers.get_list("Allow") == list(ALLOWED)


def test_method_check_comes_after_syntax() -> None:
    # a broken mandatory header is reported before the method
    expect(build("NEWMETHOD", replace={"Call-ID": "a b"}), 400)


def test_ack_is_never_405() -> None:
    resp = validate_request(build("ACK"), allowed_methods=("INVITE",), supported=())
    assert resp is not None and resp.status == 400  # "drop it": ACK gets no response


def test_require_unknown_420_with_unsupported() -> None:
    resp = expect(build(extra=("Require: 100REL, foo", "Require: bar")), 420, "Bad Extension")
    assert resp.headers.get_list("Unsupported") == ["foo", "bar"]
    assert check(build(extra=("Require: 100rel, Timer",))) is None


def test_proxy_require_is_not_checked_by_a_ua() -> None:
    assert check(build(extra=("Proxy-Require: foo",))) is None


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
def test_require_ignored_on_ack_and_cancel(method: str) -> None:
    assert check(build(method, extra=("Require: foo",))) is None


def test_malformed_require() -> None:
    expect(build(extra=('Require: "x"',)), 400, "Bad Request (Malformed Require header)")


def test_contact_checked_for_dialog_methods() -> None:
    expect(build("INVITE", replace={"Contact": "<sip:a@b"}), 400,
           "Bad Request (Malformed Contact header)")
    expect(build("INVITE", extra=("Contact: <sip:c@d>",)), 400,
           "Bad Request (More than one Contact)")
    expect(build("INVITE", extra=("Record-Route: <sip:p1;lr",)), 400,
           "Bad Request (Malformed Record-Route header)")
    # OPTIONS does not use Contact for a dialog
    assert check(build("OPTIONS", replace={"Contact": "<sip:a@b"})) is None


def test_content_type_check_is_optional() -> None:
    req = build("INVITE", extra=("Content-Type: application/unknownformat",), body=b"x")
    assert check(req) is None
    resp = check(req, accepted_content_types=("application/sdp",))
    assert resp is not None and resp.status == 415
    assert resp.headers.get("Accept") == "application/sdp"
    sdp = build("INVITE", extra=("Content-Type: Application/SDP; charset=x",), body=b"v=0")
    assert check(sdp, accepted_content_types=("application/sdp",)) is None
    empty = build("INVITE")
    assert check(empty, accepted_content_types=("application/sdp",)) is None


def test_error_responses_carry_a_to_tag() -> None:
    resp = expect(build(replace={"CSeq": "1 INVITE"}), 400)
    assert resp.to.tag
    assert resp.call_id == "3848276298220188511@example.com"


# -- can_answer / salvage_request ------------------------------------------------------


def test_can_answer() -> None:
    assert can_answer(build())
    assert not can_answer(build("ACK"))
    assert not can_answer(build(drop=("Call-ID",)))
    assert not can_answer(build(replace={"Via": "SIP/2.0/UDP"}))
    assert not can_answer(build(replace={"CSeq": "x"}))


def _raw(first: bytes, *headers: bytes) -> bytes:
    return first + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


H = (
    b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
    b"From: <sip:a@example.com>;tag=1",
    b"To: <sip:b@example.com>",
    b"Call-ID: abc",
    b"CSeq: 7 INVITE",
)


def test_salvage_broken_request_line() -> None:
    data = _raw(b"INVITE  sip:b@example.com  SIP/2.0", *H)
    req = salvage_request(data)
    assert req is not None and req.method == "INVITE"
    assert req.top_via.branch == "z9hG4bK1" and req.cseq.seq == 7
    resp = make_response(req, 400)
    assert resp.call_id == "abc" and resp.to.tag


def test_salvage_compact_folded_and_lf_only() -> None:
    data = (b"OPTIONS sip:x SIP/2.0 extra\nv: SIP/2.0/UDP h;branch=z9hG4bK9\nf: <sip:a@x>;tag=1\n"
            b"t: <sip:b@x>\ni: id\ncseq: 1\n  OPTIONS\nBroken line\n")
    req = salvage_request(data)
    assert req is not None and req.method == "OPTIONS" and req.cseq.method == "OPTIONS"


@pytest.mark.parametrize(
    "data",
    [
        _raw(b"SIP/2.0 200 OK", *H),  # a response
        _raw(b"ACK sip:b@example.com SIP/2.0", *H[:4], b"CSeq: 7 ACK"),
        _raw(b"INVITE sip:b SIP/2.0", *H[:3], H[4]),  # no Call-ID
        _raw(b"INVITE sip:b SIP/2.0", b"Via: SIP/2.0/UDP", *H[1:]),  # bad Via
        _raw(b"INVITE sip:b SIP/2.0", *H[:4], b"CSeq: x"),  # bad CSeq
        _raw(b"INVITE sip:b SIP/2.0", *H, b"To: <sip:c@example.com>"),  # two To
        b"",
        b"\xff\xfe",
    ],
)
def test_salvage_refuses(data: bytes) -> None:
    assert salvage_request(data) is None
