"""Next hop and transport choice for requests the TU sends (no sockets)."""

from __future__ import annotations

import pytest

from app.sip.aio.target import UDP_SIZE_LIMIT, Target, next_hop_uri, select_target
from app.sip.message import Headers, Request


def _request(uri: str, *, routes: tuple[str, ...] = (), body: bytes = b"") -> Request:
    headers = Headers(
        [
            ("From", "<sip:callctl@127.0.0.1>;tag=a"),
            ("To", f"<{uri}>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 OPTIONS"),
            *(("Route", r) for r in routes),
        ]
    )
    return Request(method="OPTIONS", uri=uri, headers=headers, body=body)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:bob@192.0.2.1", Target(addr=("192.0.2.1", 5060), transport="udp")),
        ("sip:bob@192.0.2.1:5070", Target(addr=("192.0.2.1", 5070), transport="udp")),
        # RFC 3261 §19.1.4: parameter values compare case-insensitively (SIPp sends UDP/TCP).
        ("sip:bob@192.0.2.1;transport=TCP", Target(addr=("192.0.2.1", 5060), transport="tcp")),
        ("sip:bob@192.0.2.1;transport=tcp", Target(addr=("192.0.2.1", 5060), transport="tcp")),
        ("sip:bob@192.0.2.1;Transport=Udp", Target(addr=("192.0.2.1", 5060), transport="udp")),
        ("sip:bob@[2001:db8::1]:5080", Target(addr=("2001:db8::1", 5080), transport="udp")),
        # maddr overrides the host (RFC 3261 §19.1.1)
        ("sip:bob@example.com;maddr=192.0.2.9", Target(addr=("192.0.2.9", 5060), transport="udp")),
        ("sip:bob@example.com", Target(addr=("example.com", 5060), transport="udp")),
    ],
)
def test_target_from_request_uri(uri: str, expected: Target) -> None:
    assert select_target(_request(uri)) == expected


def test_first_route_is_the_next_hop() -> None:
    req = _request(
        "sip:bob@192.0.2.1",
        routes=("<sip:192.0.2.50:5080;lr;transport=tcp>", "<sip:192.0.2.51;lr>"),
    )
    assert str(next_hop_uri(req)) == "sip:192.0.2.50:5080;lr;transport=tcp"
    assert select_target(req) == Target(addr=("192.0.2.50", 5080), transport="tcp")


def test_large_request_goes_over_tcp_unless_the_uri_says_udp() -> None:
    # RFC 3261 §18.1.1: larger than 1300 bytes with the path MTU unknown -> TCP.
    body = b"x" * UDP_SIZE_LIMIT
    assert select_target(_request("sip:bob@192.0.2.1", body=body)).transport == "tcp"
    assert select_target(_request("sip:bob@192.0.2.1", body=body), tcp_enabled=False) == Target(
        addr=("192.0.2.1", 5060), transport="udp"
    )
    explicit = _request("sip:bob@192.0.2.1;transport=udp", body=body)
    assert select_target(explicit).transport == "udp"
    assert select_target(_request("sip:bob@192.0.2.1", body=b"x" * 100)).transport == "udp"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sips:bob@192.0.2.1", "TLS"),
        ("tel:+15551234567", "non-SIP"),
        ("sip:bob@192.0.2.1;transport=sctp", "unsupported transport"),
    ],
)
def test_unsupported_targets_raise(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_target(_request(uri))
