"""parse_message, serialisation, Content-Length rules and StreamFramer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.sip.errors import SipParseError
from app.sip.headers import CSeq
from app.sip.message import Headers, Request, Response
from app.sip.parser import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_MESSAGE_BYTES,
    KeepAlivePing,
    KeepAlivePong,
    StreamFramer,
    is_keepalive,
    parse_message,
)
from app.sip.uri import SipUri
from app.sip.validate import salvage_request, validate_request

MALFORMED = Path(__file__).resolve().parent / "malformed"
ALLOWED = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "PRACK", "UPDATE", "REFER",
           "NOTIFY")

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@example.com>\r\n'
    b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)


def _req(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def _with(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


# -- requests and responses ------------------------------------------------------------


def test_parse_invite() -> None:
    req = _req(INVITE)
    assert (req.method, req.uri, req.version) == ("INVITE", "sip:bob@example.com", "SIP/2.0")
    assert req.body == SDP
    assert req.call_id == "a84b4c76e66710@pc33.example.com"
    assert req.cseq == CSeq(314159, "INVITE")
    assert req.top_via.branch == "z9hG4bK776asdhds" and req.top_via.port == 5060
    assert req.from_.tag == "1928301774" and req.from_.display_name == "Alice"
    assert req.to.tag is None and req.max_forwards == 70
    assert [str(c.uri) for c in req.contacts] == ["sip:alice@pc33.example.com"]
    assert req.content_type == "application/sdp"
    assert req.record_routes == [] and req.routes == []
    ruri = req.parsed_uri()
    assert isinstance(ruri, SipUri) and ruri.user == "bob"
    assert req.to_bytes() == INVITE


def test_parsed_uri_follows_uri_changes() -> None:
    req = _req(INVITE)
    assert str(req.parsed_uri()) == "sip:bob@example.com"
    req.uri = "sip:carol@example.com"
    assert str(req.parsed_uri()) == "sip:carol@example.com"
    req.uri = "sip:bad host"
    with pytest.raises(SipParseError):
        req.parsed_uri()


def test_request_uri_object_is_rendered() -> None:
    req = Request("OPTIONS", SipUri(user="a", host="b"))  # type: ignore[arg-type]
    assert req.uri == "sip:a@b"
    assert req.to_bytes().startswith(b"OPTIONS sip:a@b SIP/2.0\r\n")


def test_parse_response() -> None:
    data = (
        b"SIP/2.0 180 Ringing Now\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"To: <sip:b@x>;tag=2\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    resp = parse_message(data)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason, resp.version) == (180, "Ringing Now", "SIP/2.0")
    assert resp.to.tag == "2" and resp.cseq.method == "INVITE"
    assert resp.to_bytes() == data


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [(b"SIP/2.0 100 ", 100, ""), (b"SIP/2.0 100", 100, ""), (b"sip/2.0 699 x  y", 699, "x  y"),
     ("SIP/2.0 200 OK \u00e9\u4e2d".encode(), 200, "OK \u00e9\u4e2d")],
)
def test_status_lines(line: bytes, status: int, reason: str) -> None:
    resp = parse_message(line + b"\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (status, reason)


@pytest.mark.parametrize(
    "line",
    [b"SIP/2.0 4294967301 big", b"SIP/2.0 99 x", b"SIP/2.0 700 x", b"SIP/2.0 2OO OK",
     b"SIP/2.0", b"SIP/x.y 200 OK", b"SIP/2.0 \xd9\xa1\xd9\xa1\xd9\xa1 x"],
)
def test_bad_status_lines(line: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(line + b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    "line",
    [b"INVITE  sip:a@b SIP/2.0", b"INVITE sip:a@b SIP/2.0 ", b"INVITE sip:a@b", b"INVITE",
     b"INVITE sip:a@b; lr SIP/2.0", b"INV:TE sip:a@b SIP/2.0", b"INVITE sip:a@b SIP/2",
     b"INVITE sip:a@b HTTP/1.1", b"", b"INVITE sip:a\x01@b SIP/2.0"],
)
def test_bad_request_lines(line: bytes) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(line + b"\r\nContent-Length: 0\r\n\r\n")
    assert info.value.status_hint == 400


def test_version_is_kept_for_the_validator() -> None:
    req = _req(b"OPTIONS sip:a@b SIP/7.0\r\nContent-Length: 0\r\n\r\n")
    assert req.version == "SIP/7.0"


def test_leading_crlfs_are_ignored() -> None:
    req = _req(b"\r\n\r\n" + INVITE)
    assert req.to_bytes() == INVITE


# -- header fields ---------------------------------------------------------------------

TORTUOUS = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"TO :\r\n sip:bob@example.com ;   tag    = 1918181833n\r\n"
    b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n'
    b"  ;\r\n  tag = 98asjd8\r\n"
    b"MaX-fOrWaRdS: 0068\r\n"
    b"i: wsinv.ndaksdj@192.0.2.1\r\n"
    b"cseq: 0009\r\n  OPTIONS\r\n"
    b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw\r\n"
    b"s :\r\n"
    b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
    b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
    b"v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n"
    b"  branch  =   z9hG4bK9ikj8  ,\r\n"
    b" SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n"
    b'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\r\n'
    b"      newvalue ;\r\n  secondparam ; q = 0.33\r\n"
    b"l: 0\r\n\r\n"
)


def test_folding_compact_forms_and_odd_spacing() -> None:
    req = _req(TORTUOUS)
    assert req.to_bytes() == TORTUOUS  # byte-faithful
    h = req.headers
    assert h.get("To") == "sip:bob@example.com ;   tag    = 1918181833n"
    assert h.get("cseq") == "0009 OPTIONS"
    assert h.get("newfangledheader") == "newfangled value continued newfangled value"
    assert h.get("Subject") == ""
    assert [n for n, _ in h][:3] == ["TO", "from", "MaX-fOrWaRdS"]
    assert req.to.tag == "1918181833n" and req.from_.tag == "98asjd8"
    assert req.from_.display_name == 'J Rosenberg \\"'
    assert req.max_forwards == 68 and req.cseq == CSeq(9, "OPTIONS")
    assert [(v.transport, v.host, v.branch) for v in req.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    (contact,) = req.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}


def test_changed_header_is_rendered_others_kept() -> None:
    req = _req(TORTUOUS)
    req.headers.set("NewFangledHeader", "short")
    out = req.to_bytes()
    assert b"\r\nNewFangledHeader: short\r\n" in out
    assert b"continued newfangled" not in out
    assert b"TO :\r\n sip:bob@example.com ;   tag    = 1918181833n\r\n" in out
    assert _req(out).headers.get("newfangledheader") == "short"


def test_non_utf8_header_bytes_round_trip() -> None:
    data = _with(INVITE, b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nX-Raw: \xff\xfe\x80\r\n")
    assert _req(data).to_bytes() == data


@pytest.mark.parametrize(
    ("extra", "why"),
    [(b"Subject hello\r\n", "no colon"), (b"Bad Name: x\r\n", "name"),
     (b": value\r\n", "empty name"), (b"Subject: a\nb\r\n", "bare LF"),
     (b"Subject: a\rb\r\n", "bare CR"), (b"X-\xff: 1\r\n", "non-token name")],
)
def test_bad_header_lines(extra: bytes, why: str) -> None:
    with pytest.raises(SipParseError):
        parse_message(_with(INVITE, b"Max-Forwards: 70\r\n", extra))


def test_continuation_before_first_field() -> None:
    with pytest.raises(SipParseError):
        parse_message(b"OPTIONS sip:a@b SIP/2.0\r\n folded\r\nContent-Length: 0\r\n\r\n")


def test_no_end_of_headers() -> None:
    with pytest.raises(SipParseError):
        parse_message(INVITE.split(b"\r\n\r\n")[0] + b"\r\n")


def test_header_count_and_size_limits() -> None:
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
    with pytest.raises(SipParseError) as info:
        parse_message(_with(INVITE, b"Max-Forwards: 70\r\n", many))
    assert info.value.status_hint == 513
    big = b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n"
    with pytest.raises(SipParseError):
        parse_message(_with(INVITE, b"Max-Forwards: 70\r\n", big))
    with pytest.raises(SipParseError):
        parse_message(INVITE + b"\0" * MAX_MESSAGE_BYTES)


# -- Content-Length (RFC 3261 §18.3) ---------------------------------------------------


def test_datagram_longer_body_is_truncated() -> None:
    req = _req(INVITE + b"garbage after the body")
    assert req.body == SDP
    assert req.to_bytes() == INVITE


def test_datagram_shorter_body_is_an_error() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE[:-3])
    assert info.value.status_hint == 400 and not info.value.close_connection


def test_missing_content_length_on_datagram_means_rest() -> None:
    data = _with(INVITE, b"Content-Length: %d\r\n" % len(SDP), b"")
    req = _req(data)
    assert req.body == SDP
    assert req.to_bytes() == INVITE  # Content-Length added (it was the last field)
    with pytest.raises(SipParseError) as info:
        parse_message(data, stream=True)
    assert info.value.close_connection


@pytest.mark.parametrize("value", [b"-999", b"ten", b"1e3", b"99999999999", b"", b"\xd9\xa1"])
def test_bad_content_length(value: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(_with(INVITE, b"Content-Length: %d" % len(SDP), b"Content-Length: " + value))


def test_duplicate_content_length() -> None:
    same = _with(INVITE, b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nl: %d\r\n" % len(SDP))
    assert _req(same).body == SDP
    assert _req(same).to_bytes().count(b"Content-Length") == 0  # first one ("l") kept
    other = _with(INVITE, b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nl: 3\r\n")
    with pytest.raises(SipParseError):
        parse_message(other)


def test_serialiser_fixes_content_length() -> None:
    req = _req(INVITE)
    req.body = b"v=0\r\n"
    out = req.to_bytes()
    assert b"\r\nContent-Length: 5\r\n\r\nv=0\r\n" in out
    assert _req(out).body == b"v=0\r\n"
    built = Request("OPTIONS", "sip:a@b", Headers([("Call-ID", "x")]))
    assert built.to_bytes() == b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    built.headers.add("Content-Length", "7")
    built.headers.add("Content-Length", "8")
    assert built.to_bytes().count(b"Content-Length: 0\r\n") == 1
    assert b"7" not in built.to_bytes() and b"8" not in built.to_bytes()


# -- equality --------------------------------------------------------------------------


def test_equality() -> None:
    a = _req(INVITE)
    b = _req(INVITE.replace(b"Call-ID:", b"i:").replace(b"Max-Forwards: 70", b"Max-Forwards:  70"))
    assert a == b  # compact vs long name, whitespace
    b.body = b"x"
    assert a != b
    c = _req(INVITE)
    c.headers.add("X", "1")
    assert a != c
    d = _req(INVITE)
    d.uri = "sip:other@example.com"
    assert a != d
    assert a != "INVITE"
    resp = Response(200, "OK")
    assert resp == Response(200, "OK") and resp != Response(200, "Fine") and resp != a


def test_is_keepalive() -> None:
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n")
    assert not is_keepalive(b"") and not is_keepalive(INVITE)
    with pytest.raises(SipParseError):
        parse_message(b"\r\n\r\n")


# -- hand-written malformed corpus -------------------------------------------------------

_EXPECTED = json.loads((MALFORMED / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_malformed_corpus(name: str) -> None:
    entry = _EXPECTED[name]
    data = (MALFORMED / entry["file"]).read_bytes()
    if entry["expect"] == "parse_error":
        with pytest.raises(SipParseError):
            parse_message(data)
        salvaged = salvage_request(data)
        assert (salvaged is not None) == entry["answerable"]
        return
    req = _req(data)
    resp = validate_request(req, allowed_methods=ALLOWED, supported=("100rel",))
    assert resp is not None, entry["why"]
    assert resp.status == entry["expect"], (resp.status, resp.reason)


# -- StreamFramer ----------------------------------------------------------------------

OPTIONS = (
    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK2\r\nCall-ID: x\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_framer_splits_messages() -> None:
    f = StreamFramer()
    out = f.feed(INVITE + OPTIONS + INVITE[:10])
    assert out == [INVITE, OPTIONS]
    assert f.buffered == 10
    assert f.feed(INVITE[10:]) == [INVITE]
    assert f.buffered == 0


def test_framer_byte_by_byte() -> None:
    f = StreamFramer()
    got: list[object] = []
    for i in range(len(INVITE + OPTIONS)):
        got.extend(f.feed((INVITE + OPTIONS)[i : i + 1]))
    assert got == [INVITE, OPTIONS]
    assert isinstance(parse_message(INVITE, stream=True), Request)


def test_framer_keepalives() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n") == [KeepAlivePing()]
    assert f.feed(b"\r\n\r\n\r\n\r\n" + OPTIONS) == [KeepAlivePing(), KeepAlivePing(), OPTIONS]
    assert f.feed(b"\r\n" + OPTIONS) == [KeepAlivePong(), OPTIONS]
    assert f.feed(b"\r\n") == [KeepAlivePong()]
    assert f.feed(OPTIONS) == [OPTIONS]


def test_framer_split_ping() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n") == [KeepAlivePong()]
    assert f.feed(b"\r\n") == [KeepAlivePing()]
    assert f.feed(b"\r\n\r") == []
    assert f.feed(b"\n") == [KeepAlivePing()]
    assert f.feed(b"\n" + OPTIONS) == [OPTIONS]  # a stray LF is skipped


def test_framer_waits_for_body() -> None:
    f = StreamFramer()
    assert f.feed(INVITE[:-5]) == []
    assert f.feed(INVITE[-5:]) == [INVITE]


@pytest.mark.parametrize(
    "data",
    [
        OPTIONS.replace(b"Content-Length: 0\r\n", b""),
        OPTIONS.replace(b"Content-Length: 0", b"Content-Length: -1"),
        OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 1"),
        OPTIONS.replace(b"Content-Length: 0", b"Content-Length: %d" % (MAX_MESSAGE_BYTES + 1)),
        b"X" * (MAX_HEADER_BYTES + 1),
        OPTIONS.replace(b"Call-ID: x\r\n", b"X-H: 1\r\n" * (MAX_HEADERS + 1)),
        b"\rX",
    ],
)
def test_framer_errors_close_the_connection(data: bytes) -> None:
    f = StreamFramer()
    with pytest.raises(SipParseError) as info:
        f.feed(data)
    assert info.value.close_connection
    assert f.failed
    with pytest.raises(SipParseError):
        f.feed(OPTIONS)


def test_framer_folded_and_compact_content_length() -> None:
    data = OPTIONS.replace(b"Content-Length: 0", b"l:\r\n 3") + b"abc"
    assert StreamFramer().feed(data) == [data]
    assert _req(data).body == b"abc"


def test_framer_returns_messages_before_an_error() -> None:
    f = StreamFramer()
    bad = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: x")
    assert f.feed(OPTIONS + b"\r\n\r\n" + bad) == [OPTIONS, KeepAlivePing()]
    assert f.failed and f.error is not None and f.error.close_connection
    with pytest.raises(SipParseError):
        f.feed(OPTIONS)
    assert StreamFramer().error is None
