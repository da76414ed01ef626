"""Property tests: generated messages survive serialise -> parse -> serialise."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.sip.headers import (
    COMPACT_FORMS,
    NameAddr,
    Via,
    parse_name_addr,
    parse_via,
    split_header_list,
)
from app.sip.message import Headers, Request, Response
from app.sip.parser import StreamFramer, parse_message
from app.sip.uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri, uri_equal

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=10)
escapes = st.sampled_from(["%20", "%40", "%3A", "%00", "%3b"])


def _escaped(alphabet: str, min_size: int = 1) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.text(alphabet, min_size=1, max_size=4), escapes),
                    min_size=min_size, max_size=4).map("".join)


labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
hostnames = st.lists(labels, min_size=1, max_size=3).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda parts: "[" + ":".join(f"{p:x}" for p in parts) + "]"
)
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.one_of(st.none(), st.integers(1, 65535))
param_names = st.text(string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=8)
uri_params = st.dictionaries(param_names, st.one_of(st.none(), _escaped(UNRESERVED + "[]/:&+$")),
                             max_size=3)
uri_headers = st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=6),
                              _escaped(UNRESERVED + "[]/?:+$", 0), max_size=2)

sip_uris = st.builds(
    SipUri,
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.one_of(st.none(), _escaped(UNRESERVED + "&=+$,;?/")),
    password=st.none(),
    host=hosts,
    port=ports,
    params=uri_params,
    headers=uri_headers,
).map(lambda u: SipUri(u.scheme, u.user, (None if u.user is None else u.password), u.host,
                       u.port, u.params, u.headers))
sip_uris_with_pw = st.builds(
    SipUri, scheme=st.just("sip"), user=_escaped(UNRESERVED), password=_escaped(UNRESERVED, 0),
    host=hosts, port=ports,
)
tel_uris = st.builds(
    TelUri,
    number=st.one_of(st.from_regex(r"\+[0-9][0-9\-.()]{0,12}", fullmatch=True),
                     st.from_regex(r"[0-9*#]{1,8}", fullmatch=True)),
    params=st.dictionaries(param_names, st.one_of(st.none(), param_names), max_size=2),
)
abs_uris = st.builds(AbsoluteUri, scheme=st.sampled_from(["http", "urn", "mailto", "isbn"]),
                     rest=st.text(string.ascii_letters + string.digits + "/:.@-_", min_size=1,
                                  max_size=20))
any_uri: st.SearchStrategy[Uri] = st.one_of(sip_uris, sip_uris_with_pw, tel_uris, abs_uris)

display_names = st.one_of(
    st.none(),
    st.lists(tokens, min_size=1, max_size=3).map(" ".join),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
            max_size=15),
)
name_addrs = st.builds(
    NameAddr,
    display_name=display_names,
    uri=any_uri,
    params=st.dictionaries(tokens.map(str.lower), st.one_of(st.none(), tokens), max_size=3),
)
vias = st.builds(
    Via,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    host=hosts,
    port=ports,
    params=st.fixed_dictionaries(
        {"branch": tokens.map(lambda t: "z9hG4bK" + t)},
        optional={"rport": st.one_of(st.none(), st.integers(1, 65535).map(str)),
                  "received": st.one_of(ipv4, ipv6), "ttl": st.integers(0, 255).map(str)},
    ),
)

header_names = st.one_of(
    st.sampled_from(["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Subject", "Allow",
                     "X-Custom", "Route", "Supported"]),
    st.sampled_from(sorted(COMPACT_FORMS)),
    tokens,
).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper()])).filter(
    lambda n: n.lower() not in ("content-length", "l")  # to_bytes owns Content-Length
)
free_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30
)
header_values = st.one_of(
    free_text,
    name_addrs.map(str),
    vias.map(str),
    st.lists(vias.map(str), min_size=2, max_size=3).map(", ".join),
    st.lists(name_addrs.map(str), min_size=1, max_size=3).map(", ".join),
    st.lists(tokens, min_size=1, max_size=4).map(", ".join),
)
header_lists = st.lists(st.tuples(header_names, header_values), max_size=12)
bodies = st.binary(max_size=200)


def _headers(items: list[tuple[str, str]]) -> Headers:
    return Headers(items)


requests = st.builds(
    Request,
    method=st.one_of(st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "CANCEL"]), tokens),
    uri=any_uri.map(str),
    headers=header_lists.map(_headers),
    body=bodies,
)
responses = st.builds(
    Response,
    status=st.integers(100, 699),
    reason=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                   max_size=20),
    headers=header_lists.map(_headers),
    body=bodies,
)


@SETTINGS
@given(st.one_of(requests, responses))
def test_message_round_trip(msg: Request | Response) -> None:
    data = msg.to_bytes()
    parsed = parse_message(data)
    assert parsed == msg
    assert parsed.to_bytes() == data
    assert StreamFramer().feed(data) == [data]
    assert parse_message(data, stream=True) == msg


@SETTINGS
@given(any_uri)
def test_uri_round_trip(uri: Uri) -> None:
    text = str(uri)
    again = parse_uri(text)
    assert again == uri
    assert str(again) == text
    assert uri_equal(uri, again)


@SETTINGS
@given(name_addrs)
def test_name_addr_round_trip(na: NameAddr) -> None:
    assert parse_name_addr(str(na)) == na


@SETTINGS
@given(vias)
def test_via_round_trip(via: Via) -> None:
    assert parse_via(str(via)) == via


@SETTINGS
@given(st.lists(name_addrs, min_size=1, max_size=4))
def test_comma_lists_split_back(items: list[NameAddr]) -> None:
    value = ", ".join(map(str, items))
    assert [parse_name_addr(v) for v in split_header_list(value)] == items


# Raw wire text with folding, odd spacing around the colon and compact names: the
# parser must hand back the same bytes and the unfolded value.
pieces = st.text(TOKEN_CHARS + "<>@:;=\" ", min_size=1, max_size=10).map(str.strip).filter(bool)
raw_fields = st.tuples(
    header_names,
    st.sampled_from(["", " ", "\t", "  "]),  # before the colon
    st.sampled_from(["", " ", "   ", "\t"]),  # after the colon
    st.lists(st.tuples(pieces, st.sampled_from([" ", "\t", "   ", " \t"])), min_size=1,
             max_size=3),
)


@SETTINGS
@given(st.lists(raw_fields, max_size=8), bodies)
def test_raw_wire_text_is_kept(fields: list[tuple[str, str, str, list[tuple[str, str]]]],
                               body: bytes) -> None:
    lines = ["MESSAGE sip:a@example.com SIP/2.0"]
    expected: list[tuple[str, str]] = []
    for name, before, after, parts in fields:
        first, *rest = parts
        text = f"{name}{before}:{after}{first[0]}"
        for piece, indent in rest:
            text += f"\r\n{indent}{piece}"
        lines.append(text)
        expected.append((name, " ".join(p for p, _ in parts)))
    lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    msg = parse_message(data)
    assert msg.to_bytes() == data
    assert [(n, v) for n, v in msg.headers][:-1] == expected
    assert msg.body == body
