"""Header names, structured header values, the Headers container and make_response."""

from __future__ import annotations

import pytest

from app.sip.errors import LocalProtocolError, SipParseError
from app.sip.headers import (
    COMPACT_FORMS,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    normalize_name,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_params,
    parse_via,
    quote_string,
    split_header_list,
    unquote_string,
)
from app.sip.message import Headers, Request, make_response
from app.sip.parser import parse_message
from app.sip.reasons import reason_phrase
from app.sip.uri import SipUri, TelUri, parse_uri

# -- names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compact", "full"),
    [
        ("i", "Call-ID"), ("m", "Contact"), ("f", "From"), ("t", "To"), ("v", "Via"),
        ("l", "Content-Length"), ("c", "Content-Type"), ("k", "Supported"),
        ("s", "Subject"), ("e", "Content-Encoding"), ("o", "Event"), ("r", "Refer-To"),
        ("u", "Allow-Events"), ("x", "Session-Expires"), ("b", "Referred-By"),
    ],
)
def test_compact_forms(compact: str, full: str) -> None:
    assert COMPACT_FORMS[compact] == full
    assert normalize_name(compact) == normalize_name(compact.upper()) == full.lower()
    assert canonical_name(compact) == full


def test_names_are_case_insensitive() -> None:
    assert normalize_name("cAlL-iD") == "call-id"
    assert canonical_name("cseq") == "CSeq"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("X-Custom") == "X-Custom"


# -- lists, params, quoted strings -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("a, b ,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:j@x>, <sip:k@y>', ['"Doe, John" <sip:j@x>', "<sip:k@y>"]),
        ("<sip:a@x;p=1,2>, <sip:b@y>", ["<sip:a@x;p=1,2>", "<sip:b@y>"]),
        ('"a \\", b" <sip:a@x>', ['"a \\", b" <sip:a@x>']),
        ("a,,b, ,", ["a", "b"]),
        ("", []),
        ('"x, <y" <sip:a@b>, c', ['"x, <y" <sip:a@b>', "c"]),
    ],
)
def test_split_header_list(value: str, parts: list[str]) -> None:
    assert split_header_list(value) == parts


@pytest.mark.parametrize("value", ['"open, x', "<sip:a@b, c"])
def test_split_header_list_unbalanced(value: str) -> None:
    with pytest.raises(SipParseError):
        split_header_list(value)


def test_parse_params() -> None:
    assert parse_params(";Tag = 1x ; lr ;q=0.5") == {"tag": "1x", "lr": None, "q": "0.5"}
    assert parse_params('x="a;b\\"c";received=[2001:db8::9:255]') == {
        "x": '"a;b\\"c"',
        "received": "[2001:db8::9:255]",
    }
    assert parse_params("") == {}


@pytest.mark.parametrize("s", [";;", "a=1;", "=1", "a=b c", 'a="open', "a b=1", 'a="x"y'])
def test_parse_params_errors(s: str) -> None:
    with pytest.raises(SipParseError):
        parse_params(s)


def test_quoted_strings() -> None:
    assert unquote_string('"J Rosenberg \\\\\\""') == 'J Rosenberg \\"'
    assert unquote_string('""') == ""
    assert quote_string('a"b\\c') == '"a\\"b\\\\c"'
    assert unquote_string(quote_string('a"b\\c')) == 'a"b\\c'
    with pytest.raises(SipParseError):
        unquote_string("x")


# -- name-addr -------------------------------------------------------------------------


def test_name_addr_quoted_display_and_params() -> None:
    na = parse_name_addr('"J Rosenberg \\\\\\""   <sip:jdrosen@example.com> ; tag = 98asjd8')
    assert na.display_name == 'J Rosenberg \\"'
    assert na.uri == SipUri(user="jdrosen", host="example.com")
    assert na.tag == "98asjd8"


def test_name_addr_token_display_without_space() -> None:
    na = parse_name_addr("caller<sip:caller@example.com>;tag=323")
    assert na.display_name == "caller"
    assert na.tag == "323"


def test_addr_spec_params_belong_to_the_header() -> None:
    # RFC 3261 §20.10: without <> the ;params are header parameters.
    na = parse_name_addr("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert na.display_name is None
    assert isinstance(na.uri, SipUri) and na.uri.params == {}
    assert na.params == {"tag": "1918181833n"}
    inside = parse_name_addr("<sip:u@example.com;unknownparam>")
    assert isinstance(inside.uri, SipUri) and inside.uri.params == {"unknownparam": None}
    assert inside.params == {}


def test_name_addr_with_other_schemes() -> None:
    assert isinstance(parse_name_addr("<tel:+1234>;tag=x").uri, TelUri)
    assert str(parse_name_addr("<http://www.example.com>").uri) == "http://www.example.com"


@pytest.mark.parametrize(
    "value",
    [
        "",
        '"Mr. J. User <sip:j.user@example.com>',  # unterminated quote
        "Bell, Alexander <sip:a.g.bell@example.com>",  # unquoted comma
        "< sip:t.watson@example.org >",
        '"x" sip:a@b',
        "<sip:a@b",
        "<sip:a@b> junk",
        "sip:user@example.com?Route=%3Csip:example.com%3E",  # §20.10: needs <>
        "<sip:a@b>;;",
        "<>",
        "<sip:>",
    ],
)
def test_name_addr_errors(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(value)


def test_name_addr_render_and_tag_setter() -> None:
    na = NameAddr(display_name='Bob "B"', uri=parse_uri("sip:bob@example.com"))
    na.tag = "abc"
    assert str(na) == '"Bob \\"B\\"" <sip:bob@example.com>;tag=abc'
    again = parse_name_addr(str(na))
    assert again == na
    na.tag = None
    assert str(na) == '"Bob \\"B\\"" <sip:bob@example.com>'
    c = na.copy()
    c.params["x"] = "1"
    assert na.params == {}
    assert str(NameAddr(uri=parse_uri("sip:a@b"))) == "<sip:a@b>"


# -- Via -------------------------------------------------------------------------------


def test_via_with_lws_everywhere() -> None:
    v = parse_via("SIP  /   2.0 /UDP    192.0.2.2;rport;branch=390skdjuw")
    assert (v.protocol, v.transport, v.host, v.port) == ("SIP/2.0", "UDP", "192.0.2.2", None)
    assert v.branch == "390skdjuw"
    assert v.has_rport and v.rport is None
    v2 = parse_via("SIP / 2.0 / tcp  spindle.example.com:5061   ;  branch  =   z9hG4bK9ikj8")
    assert (v2.transport, v2.host, v2.port, v2.branch) == (
        "TCP", "spindle.example.com", 5061, "z9hG4bK9ikj8"
    )


def test_via_sent_by_allows_whitespace_around_the_colon() -> None:
    v = parse_via("SIP/2.0/UDP host.example.com : 5070 ;branch=z9hG4bK1")
    assert (v.host, v.port, v.branch) == ("host.example.com", 5070, "z9hG4bK1")
    assert parse_via("SIP/2.0/TCP [::1]\t:5060").sent_by == "[::1]:5060"


def test_via_params() -> None:
    v = parse_via(
        "SIP/2.0/UDP [2001:db8::9:1]:5060;branch=z9hG4bKas3;received=[2001:db8::9:255]"
        ";rport=5070;maddr=239.255.255.1;ttl=16"
    )
    assert v.host == "[2001:db8::9:1]" and v.port == 5060
    assert v.received == "[2001:db8::9:255]"
    assert v.has_rport and v.rport == 5070
    assert v.maddr == "239.255.255.1" and v.ttl == 16
    assert v.sent_by == "[2001:db8::9:1]:5060"


def test_via_setters_and_render() -> None:
    v = Via(transport="UDP", host="10.0.0.1", port=5060)
    v.branch = "z9hG4bK1"
    v.params["rport"] = None
    assert str(v) == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport"
    v.received = "192.0.2.7"
    v.rport = 4000
    assert str(v) == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=4000;received=192.0.2.7"
    assert parse_via(str(v)) == v
    v.received = None
    v.rport = None
    v.branch = None
    assert str(v) == "SIP/2.0/UDP 10.0.0.1:5060"
    c = v.copy()
    c.params["x"] = None
    assert "x" not in v.params


@pytest.mark.parametrize(
    "value",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 192.0.2.1",
        "SIP/2.0/UDP 192.0.2.15;;",
        ";",
        "SIP/2.0/UDP host;rport=abc",
        "SIP/2.0/UDP host;ttl=300",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP 2001:db8::1",
        "SIP/2.0/UDP a b",
    ],
)
def test_via_errors(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(value)


# -- CSeq / Max-Forwards ---------------------------------------------------------------


def test_cseq() -> None:
    assert parse_cseq("0009 INVITE") == CSeq(9, "INVITE")
    assert parse_cseq(" 4294967295\t ACK ") == CSeq(4294967295, "ACK")
    assert str(CSeq(1, "BYE")) == "1 BYE"


@pytest.mark.parametrize(
    "value", ["", "INVITE", "1", "1 INVITE x", "-1 INVITE", "4294967296 INVITE",
              "36893488147419103232 INVITE", "1 IN/VITE", "\u0661 INVITE"]
)
def test_cseq_errors(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_cseq(value)


def test_max_forwards() -> None:
    assert parse_max_forwards("0068") == 68
    assert parse_max_forwards("0") == 0
    assert parse_max_forwards("255") == 255
    for bad in ("256", "-1", "x", "", "1 2"):
        with pytest.raises(SipParseError):
            parse_max_forwards(bad)


# -- Headers ---------------------------------------------------------------------------


def _headers() -> Headers:
    return Headers(
        [
            ("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"),
            ("Via", "SIP/2.0/UDP c;branch=z9hG4bK3"),
            ("Call-ID", "abc@x"),
            ("Authorization", 'Digest username="a", realm="b"'),
            ("X-Thing", "1"),
        ]
    )


def test_headers_lookup() -> None:
    h = _headers()
    assert h.get("VIA") == "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"
    assert h.get("i") == "abc@x"
    assert h.get("missing") is None
    assert h.get_all("via") == [
        "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert [v.split(";")[0] for v in h.get_list("Via")] == [
        "SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"
    ]
    # not a comma list: kept whole
    assert h.get_list("authorization") == ['Digest username="a", realm="b"']
    assert "CALL-ID" in h and "i" in h and "Contact" not in h
    assert 5 not in h
    assert [name for name, _ in h] == ["v", "Via", "Call-ID", "Authorization", "X-Thing"]
    assert h.count("via") == 2 and len(h) == 5


def test_headers_mutation() -> None:
    h = _headers()
    h.prepend("Via", "SIP/2.0/UDP z;branch=z9hG4bK0")
    assert h.get_list("via")[0] == "SIP/2.0/UDP z;branch=z9hG4bK0"
    h.remove_first("Via")
    h.remove_first("Via")  # drops only the first value of the combined field
    assert [v.split(" ")[1] for v in h.get_list("Via")] == [
        "b;branch=z9hG4bK2", "c;branch=z9hG4bK3"
    ]
    assert next(name for name, _ in h) == "v"
    h.replace_first("via", "SIP/2.0/TCP q;branch=z9hG4bK9")
    assert h.get_list("via")[0] == "SIP/2.0/TCP q;branch=z9hG4bK9"
    h.set("via", "SIP/2.0/UDP only;branch=z9hG4bK7")
    assert h.get_all("Via") == ["SIP/2.0/UDP only;branch=z9hG4bK7"]
    assert next(name for name, _ in h) == "v"  # first field's position and raw name kept
    h.remove("x-thing")
    assert "X-Thing" not in h
    h.set("New", "1")
    assert list(h)[-1] == ("New", "1")
    h.remove_first("Absent")
    h.replace_first("Also-Absent", "x")
    assert h.get("also-absent") == "x"


def test_headers_copy_is_independent() -> None:
    h = _headers()
    c = h.copy()
    c.add("X-New", "1")
    c.remove("Via")
    assert "X-New" not in h and h.count("Via") == 2
    assert c != h
    assert h.copy() == h


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "evil\r\nInjected: 1"), ("X-A", "a\nb"), ("X-A", "nul\x00"), ("Bad Name", "1"),
     ("", "1"), ("X:Y", "1")],
)
def test_headers_refuse_injection(name: str, value: str) -> None:
    h = Headers()
    for op in (h.add, h.prepend, h.set, h.replace_first):
        with pytest.raises(LocalProtocolError):
            op(name, value)
    assert len(h) == 0


def test_views_follow_header_changes() -> None:
    req = _request()
    assert req.to.tag is None
    req.headers.set("To", "<sip:bob@example.com>;tag=zz")
    assert req.to.tag == "zz"
    req.to = NameAddr(uri=parse_uri("sip:carol@example.com"), params={"tag": "t2"})
    assert req.headers.get("t") == "<sip:carol@example.com>;tag=t2"
    req.cseq = CSeq(2, "INVITE")
    assert req.headers.get("CSeq") == "2 INVITE" and req.cseq.seq == 2
    req.call_id = "new@id"
    assert req.call_id == "new@id"
    req.max_forwards = 10
    assert req.max_forwards == 10
    req.max_forwards = None
    assert req.max_forwards is None and "Max-Forwards" not in req.headers
    via = req.top_via.copy()
    via.received = "192.0.2.9"
    req.top_via = via
    assert req.top_via.received == "192.0.2.9"
    assert len(req.vias) == 3
    assert req.vias[1].branch == "z9hG4bK1"  # the rest of the combined field is kept
    req.from_ = NameAddr(display_name="A", uri=parse_uri("sip:a@x"), params={"tag": "f"})
    assert req.from_.display_name == "A" and req.from_.tag == "f"


# -- make_response (RFC 3261 §8.2.6) ---------------------------------------------------

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP pc33.example.com;branch=z9hG4bKnashds8, SIP/2.0/UDP p1;branch=z9hG4bK1\r\n"
    b"Via:  SIP/2.0/TCP p2.example.com;branch=z9hG4bK2\r\n"
    b"Max-Forwards: 70\r\n"
    b"t: Bob <sip:bob@example.com>\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
    b"i: a84b4c76e66710\r\n"
    b"CSeq:   314159 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:alice@pc33.example.com>\r\n"
    b"Subject: hi\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _request() -> Request:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    return msg


def test_make_response_copies_headers_as_received() -> None:
    req = _request()
    resp = make_response(req, 180, to_tag="as83kd9bs")
    assert resp.status == 180 and resp.reason == "Ringing"
    names = [n for n, _ in resp.headers]
    assert names == ["v", "Via", "From", "t", "i", "CSeq"]
    assert [v.branch for v in resp.vias] == ["z9hG4bKnashds8", "z9hG4bK1", "z9hG4bK2"]
    assert resp.to.tag == "as83kd9bs"
    assert resp.from_.tag == "1928301774"
    assert resp.call_id == "a84b4c76e66710"
    assert resp.cseq == CSeq(314159, "INVITE")
    wire = resp.to_bytes()
    assert wire.startswith(b"SIP/2.0 180 Ringing\r\n")
    # copied fields keep their exact bytes; the To got its tag
    assert b"\r\nCSeq:   314159 INVITE\r\n" in wire
    assert b"\r\nt: Bob <sip:bob@example.com>;tag=as83kd9bs\r\n" in wire
    assert b"Subject" not in wire and b"Contact" not in wire and b"Timestamp" not in wire
    assert wire.endswith(b"Content-Length: 0\r\n\r\n")


def test_make_response_100_has_no_tag_and_copies_timestamp() -> None:
    resp = make_response(_request(), 100)
    assert resp.reason == "Trying"
    assert resp.to.tag is None
    assert resp.headers.get("Timestamp") == "54"  # §8.2.6.1


def test_make_response_generates_random_tag_and_keeps_existing() -> None:
    a = make_response(_request(), 486)
    b = make_response(_request(), 486)
    assert a.to.tag and b.to.tag and a.to.tag != b.to.tag
    assert a.reason == "Busy Here"
    req = _request()
    req.headers.set("To", "<sip:bob@example.com>;tag=existing")
    assert make_response(req, 200, "Fine", to_tag="other").to.tag == "existing"
    assert make_response(req, 200, "Fine").reason == "Fine"


def test_make_response_tolerates_missing_and_bad_headers() -> None:
    req = Request("OPTIONS", "sip:x@y", Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bKx"),
                                                 ("To", '"unterminated <sip:a@b>')]))
    resp = make_response(req, 400)
    assert [n for n, _ in resp.headers] == ["Via", "To"]
    assert resp.headers.get("To") == '"unterminated <sip:a@b>'  # copied as it came


def test_make_response_rejects_bad_status() -> None:
    for code in (99, 700, 0):
        with pytest.raises(LocalProtocolError):
            make_response(_request(), code)


def test_reason_phrases() -> None:
    assert reason_phrase(200) == "OK"
    assert reason_phrase(481) == "Call/Transaction Does Not Exist"
    assert reason_phrase(505) == "Version Not Supported"
    assert reason_phrase(499) == "Bad Request"  # §8.1.3.2: unknown -> x00 of its class
    assert reason_phrase(299) == "OK"
