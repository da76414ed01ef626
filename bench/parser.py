"""Parser benchmark: parse, serialise and parse+serialise rates for typical messages.

    python -m bench parser            # ~2 s per measurement
    python -m bench parser --quick    # ~1 s in all, a CI smoke run

"parse" is :func:`parse_message` plus reading the views every received message needs
(Call-ID, CSeq, top Via branch, From/To tags), since those are parsed lazily;
"parse (no views)" is :func:`parse_message` alone (start line + header split).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from app.sip.message import Request, Response
from app.sip.parser import parse_message

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, PRACK, UPDATE, REFER, NOTIFY\r\n"
    b"Supported: 100rel, replaces, timer\r\n"
    b"User-Agent: bench/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)

OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds"
    b";received=192.0.2.101;rport=5060\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n'
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4:5060>\r\n"
    b"Server: bench/1.0\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _touch(msg: Request | Response) -> None:
    # the lazily parsed views every transaction/dialog lookup reads
    _ = (msg.call_id, msg.cseq, msg.top_via.branch, msg.from_.tag, msg.to.tag)


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``, measured over about ``seconds``."""
    n = 1
    while True:  # calibrate a batch size of ~1/20 of the budget
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= seconds / 20 or n >= 1 << 24:
            break
        n *= 2
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
    return best


def run(seconds: float) -> list[tuple[str, str, float]]:
    results: list[tuple[str, str, float]] = []
    for label, data in (("INVITE+SDP", INVITE), ("200 OK", OK_200)):
        parsed = parse_message(data)
        assert parsed.to_bytes() == data, "bench message must round-trip"

        def parse(data: bytes = data) -> None:
            _touch(parse_message(data))

        def serialize(msg: Request | Response = parsed) -> None:
            msg.to_bytes()

        def both(data: bytes = data) -> None:
            m = parse_message(data)
            _touch(m)
            m.to_bytes()

        def parse_lazy(data: bytes = data) -> None:
            parse_message(data)

        for op, fn in (
            ("parse", parse),
            ("parse (no views)", parse_lazy),
            ("serialize", serialize),
            ("parse+serialize", both),
        ):
            results.append((label, op, _rate(fn, seconds)))
    return results


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench parser", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="about 1 s in all (CI smoke)")
    ap.add_argument("--seconds", type=float, default=None, help="time per measurement")
    args = ap.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.12 if args.quick else 2.0)
    print(f"python {sys.version.split()[0]}, {seconds:.2f} s per measurement (best batch)")
    for label, op, rate in run(seconds):
        print(f"{label:<11} {op:<16} {rate:>12,.0f} ops/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
