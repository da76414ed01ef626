"""The SIPp harness itself: message-log parsing and port selection (no SIPp run)."""

from __future__ import annotations

import socket

from sipp import SippMessage, free_port, parse_message_log, same_bytes

_SEP = b"-" * 47


def _entry(ts: bytes, header: bytes, data: bytes) -> bytes:
    return _SEP + b" " + ts + b"\n" + header + b"\n\n" + data + b"\n"


def test_message_log_is_split_by_the_logged_lengths() -> None:
    request = b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    # A body that contains something shaped like a log entry header.
    fake = _SEP + b" 2026-01-01 00:00:00.000000\nUDP message sent (3 bytes):\n\nabc"
    response = b"SIP/2.0 200 OK\r\nAllow: INVITE, BYE\r\nAllow: OPTIONS\r\n\r\n" + fake
    raw = _entry(
        b"2026-01-01 00:00:00.1", b"UDP message sent (%d bytes):" % len(request), request
    ) + _entry(
        b"2026-01-01 00:00:00.2",
        b"TCP message received [%d] bytes :" % len(response),
        response,
    )
    sent, received = parse_message_log(raw)
    assert (sent.direction, sent.transport, sent.data) == ("sent", "UDP", request)
    assert sent.method == "OPTIONS"
    assert sent.status is None
    assert (received.direction, received.transport, received.data) == (
        "received",
        "TCP",
        response,
    )
    assert (received.status, received.reason, received.method) == (200, "OK", None)
    assert received.header_values("allow") == ["INVITE, BYE", "OPTIONS"]
    assert received.header("Content-Length") is None


def test_same_bytes() -> None:
    def msg(data: bytes) -> SippMessage:
        return SippMessage(direction="received", transport="UDP", timestamp="t", data=data)

    assert same_bytes([msg(b"a"), msg(b"a")])
    assert not same_bytes([msg(b"a"), msg(b"b")])
    assert not same_bytes([])


def test_free_port_is_free_for_udp_and_tcp() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", port))
