"""URIs: parsing, rendering and RFC 3261 §19.1.4 / RFC 3966 §4 comparison."""

from __future__ import annotations

import pytest

from app.sip.errors import SipParseError
from app.sip.uri import (
    AbsoluteUri,
    SipUri,
    TelUri,
    escape_user,
    parse_hostport,
    parse_uri,
    uri_equal,
)


def test_sip_uri_components() -> None:
    u = parse_uri(
        "sips:alice:secret@Atlanta.example.com:5061;transport=TCP;lr;Maddr=x?Subject=hi&Pri=1"
    )
    assert isinstance(u, SipUri)
    assert u.scheme == "sips" and u.secure
    assert (u.user, u.password, u.host, u.port) == ("alice", "secret", "Atlanta.example.com", 5061)
    assert u.params == {"transport": "TCP", "lr": None, "maddr": "x"}
    assert u.transport == "tcp" and u.lr and u.maddr == "x"
    assert u.headers == {"Subject": "hi", "Pri": "1"}


def test_scheme_is_case_insensitive_and_lowered() -> None:
    u = parse_uri("SIP:bob@example.com")
    assert isinstance(u, SipUri) and u.scheme == "sip"


def test_user_keeps_escapes_and_may_hold_reserved_chars() -> None:
    u = parse_uri("sip:user;par=u%40example.net@example.com")
    assert isinstance(u, SipUri)
    assert u.user == "user;par=u%40example.net" and u.host == "example.com"
    u = parse_uri("sip:null-%00-null@example.com")
    assert isinstance(u, SipUri) and u.user == "null-%00-null"


def test_user_part_with_every_legal_character() -> None:
    # RFC 4475 §3.1.1.2 style: unreserved + user-unreserved characters, and a password.
    s = (
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    u = parse_uri(s)
    assert isinstance(u, SipUri)
    assert u.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert u.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert u.host == "example.com"
    assert str(u) == s


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:[2001:db8::10]:5070", "[2001:db8::10]", 5070),
        ("sip:[2001:db8::10:5070]", "[2001:db8::10:5070]", None),
        ("sip:user@[2001:db8:::192.0.2.1]", "[2001:db8:::192.0.2.1]", None),  # RFC 5118 §4.4
        ("sip:192.0.2.1:5060", "192.0.2.1", 5060),
    ],
)
def test_hosts(text: str, host: str, port: int | None) -> None:
    u = parse_uri(text)
    assert isinstance(u, SipUri)
    assert (u.host, u.port) == (host, port)
    assert str(u) == text


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:user@",
        "sip:host:99999",
        "sip:host:",
        "sip:host:5o60",
        "sip:2001:db8::10",  # RFC 5118 §4.1: unbracketed IPv6
        "sip:[2001:db8::10",
        "sip:[2001:db8::10]x",
        "sip:[fe80::g]",
        "sip:a b@c",
        "sip:%zz@host",
        "sip:user@host;=x",
        "sip:user@host;a b",
        "sip:host?=x",
        "sip:host?a=<b>",
        "sip:us\"er@host",
        "<sip:x@example.com>",
        "nocolon",
        ":nothing",
        "1abc:foo",
        "http:",
        "http:a b",
        "tel:",
        "tel:12 34",
        "tel:+1;=x",
    ],
)
def test_malformed_uris_raise_parse_error(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_tel_and_absolute_uris() -> None:
    t = parse_uri("tel:+1-201-555-0123;Phone-Context=example.com")
    assert isinstance(t, TelUri)
    assert t.number == "+1-201-555-0123" and t.is_global and t.scheme == "tel"
    assert t.params == {"phone-context": "example.com"}
    assert str(t) == "tel:+1-201-555-0123;phone-context=example.com"
    a = parse_uri("soap.beep://192.0.2.103:3002")
    assert isinstance(a, AbsoluteUri)
    assert (a.scheme, a.rest) == ("soap.beep", "//192.0.2.103:3002")
    assert str(a) == "soap.beep://192.0.2.103:3002"


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sip:alice:pw@example.com:5060;transport=tcp;lr?h=v&x=y",
        "sips:[::1]:5061;maddr=239.255.255.1;ttl=15",
        "sip:+15551234567;phone-context=example.com@example.com;user=phone",
        "tel:911;phone-context=+1",
        "urn:service:sos",
    ],
)
def test_str_round_trips(text: str) -> None:
    assert str(parse_uri(text)) == text
    assert str(parse_uri(str(parse_uri(text)))) == text


def test_built_uri_renders_and_copy_is_independent() -> None:
    u = SipUri(user="bob", host="example.com", port=5080, params={"transport": "tcp"})
    assert str(u) == "sip:bob@example.com:5080;transport=tcp"
    c = u.copy()
    c.params["lr"] = None
    assert "lr" not in u.params and u == parse_uri(str(u))


def test_escape_user() -> None:
    assert escape_user("a b@c") == "a%20b%40c"
    assert escape_user("+1;x=y") == "+1;x=y"
    u = parse_uri(f"sip:{escape_user('j doe@x')}@example.com")
    assert uri_equal(u, "sip:j%20doe%40x@example.com")


def test_parse_hostport() -> None:
    assert parse_hostport("example.com") == ("example.com", None)
    assert parse_hostport("[::1]:5060") == ("[::1]", 5060)
    with pytest.raises(SipParseError):
        parse_hostport("exa mple.com")


# RFC 3261 §19.1.4: pairs that are equivalent.
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("sip:a@b;transport=%74cp", "sip:a@b;transport=TCP"),
    ("sip:a@b;Foo=BAR", "sip:a@b;foo=bar"),
    ("sip:a@[2001:DB8::1]", "sip:a@[2001:db8::1]"),
    ("sip:a@b?Subject=x", "sip:a@b?subject=x"),
    ("SIP:a@b", "sip:a@b"),
    ("tel:+1-201-555-0123", "tel:+1.201.555.0123"),
    ("tel:7042;phone-context=example.com;x=1", "tel:7042;X=1;phone-context=EXAMPLE.com"),
    ("http:x", "HTTP:x"),
]

# RFC 3261 §19.1.4: pairs that are not.
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:a@b;user=phone", "sip:a@b"),
    ("sip:a@b;maddr=239.1.1.1", "sip:a@b"),
    ("sip:a@b;ttl=1", "sip:a@b"),
    ("sip:a@b;method=INVITE", "sip:a@b"),
    ("sip:a@b;foo=x", "sip:a@b;foo=y"),
    ("sip:a@b?x=1", "sip:a@b?x=2"),
    ("sip:a:pw@b", "sip:a@b"),
    ("sip:a:pw@b", "sip:a:PW@b"),
    ("sip:b", "sip:a@b"),
    ("sip:%41@b", "sip:a@b"),  # unescaped "A" is not "a": userinfo is case-sensitive
    ("sip:a@b", "tel:+123"),
    ("sip:a@b", "not a uri"),
    ("tel:7042;phone-context=example.com", "tel:7042"),
    ("tel:+123", "tel:+124"),
    ("http:x", "http:X"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_equal_uris(a: str, b: str) -> None:
    assert uri_equal(a, b)
    assert uri_equal(b, a)
    assert uri_equal(parse_uri(a), parse_uri(b))


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_unequal_uris(a: str, b: str) -> None:
    assert not uri_equal(a, b)
    assert not uri_equal(b, a)
