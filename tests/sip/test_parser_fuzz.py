"""Deterministic mutation fuzz: broken bytes must only ever give SipParseError.

Seeds are the RFC 4475/5118 torture corpus (read in place, if present), the
hand-written malformed messages and a few well-formed messages of our own. A seeded
random generator flips bits, truncates, inserts CR/LF/NUL/quotes/commas/brackets,
duplicates, drops and swaps lines. For every case: parse_message raises nothing but
SipParseError; whatever parses survives its views, validate_request (which raises
nothing), serialisation and re-parsing; salvage_request never raises. StreamFramer
gives the same messages whatever the chunking.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from app.sip.errors import SipParseError
from app.sip.message import Request, make_response
from app.sip.parser import StreamFramer, parse_message
from app.sip.validate import can_answer, salvage_request, validate_request

HERE = Path(__file__).resolve().parent
CORPUS = (HERE.parents[1] / ".." / "shared" / "sip-torture" / "msgs").resolve()
ALLOWED = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "PRACK", "UPDATE", "REFER",
           "NOTIFY")
SUPPORTED = ("100rel", "replaces", "timer")
SEED = 4475
CASES_PER_SEED = 40  # ~100 seeds -> ~4000 cases with the corpus, ~1500 without

OWN = [
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\nTo: Bob <sip:bob@example.com>\r\n"
    b'From: "Al \\"A\\"" <sip:alice@example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.example.com;transport=udp>, <sip:a2@x>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n"
    b"Require: 100rel\r\nContent-Type: application/sdp\r\nContent-Length: 10\r\n\r\n"
    b"v=0\r\no=- 1",
    b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1;received=192.0.2.1;rport=5060\r\n"
    b"t: <sip:b@x>;tag=2\r\nf: <sip:a@x>;tag=1\r\ni: c@d\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    b"\r\n\r\nBYE sips:[2001:db8::1]:5061 SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS [2001:db8::2];branch=z9hG4bKx\r\n"
    b"To: <sips:b@[2001:db8::1]>;tag=9\r\nFrom: <tel:+1-555>;tag=8\r\nCall-ID: q\r\n"
    b"CSeq: 2 BYE\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n",
]

INSERTS = [b"\r", b"\n", b"\r\n", b"\r\n ", b"\x00", b'"', b",", b"<", b">", b";", b":",
           b" ", b"\t", b"\\", b"%", b"\xff", b"\xc3", b"=", b"@", b"?", b"[", b"]",
           b"\r\n\r\n", b"99999999999999999999", b"-1"]


def _seeds() -> list[bytes]:
    seeds = list(OWN)
    seeds += [p.read_bytes() for p in sorted((HERE / "malformed").glob("*.dat"))]
    if CORPUS.is_dir():
        seeds += [p.read_bytes() for p in sorted(CORPUS.glob("*.dat"))]
    return seeds


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    ops: list[Callable[[bytes], bytes]] = [
        lambda d: _flip(rng, d),
        lambda d: d[: rng.randrange(len(d) + 1)],
        lambda d: _insert(rng, d),
        lambda d: _insert(rng, _insert(rng, d)),
        lambda d: _dup_line(rng, d),
        lambda d: _drop_line(rng, d),
        lambda d: _swap_lines(rng, d),
    ]
    for _ in range(rng.randint(1, 3)):
        data = rng.choice(ops)(data)
    return data


def _flip(rng: random.Random, d: bytes) -> bytes:
    if not d:
        return d
    b = bytearray(d)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _insert(rng: random.Random, d: bytes) -> bytes:
    i = rng.randrange(len(d) + 1)
    return d[:i] + rng.choice(INSERTS) + d[i:]


def _dup_line(rng: random.Random, d: bytes) -> bytes:
    lines = _lines(d)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return b"\r\n".join(lines)


def _drop_line(rng: random.Random, d: bytes) -> bytes:
    lines = _lines(d)
    del lines[rng.randrange(len(lines))]
    return b"\r\n".join(lines)


def _swap_lines(rng: random.Random, d: bytes) -> bytes:
    lines = _lines(d)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\r\n".join(lines)


def _exercise(data: bytes) -> str:
    """Run one case through everything; return a short outcome label."""
    salvage_request(data)  # must never raise
    try:
        msg = parse_message(data)
    except SipParseError:
        return "parse-error"
    for view in ("call_id", "cseq", "vias", "top_via", "from_", "to", "max_forwards",
                 "contacts", "record_routes", "routes"):
        try:
            getattr(msg, view)
        except SipParseError:
            pass
    wire = msg.to_bytes()
    assert parse_message(wire) == msg
    assert parse_message(wire).to_bytes() == wire
    if not isinstance(msg, Request):
        return "response"
    resp = validate_request(msg, allowed_methods=ALLOWED, supported=SUPPORTED,
                            accepted_content_types=("application/sdp",))
    can_answer(msg)
    if resp is None:
        return "accepted"
    assert 400 <= resp.status < 600
    assert parse_message(resp.to_bytes()) == resp
    make_response(msg, 200)
    return f"rejected {resp.status}"


SEEDS = _seeds()


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_mutations_raise_only_parse_errors(index: int) -> None:
    rng = random.Random(SEED * 1000 + index)
    seed = SEEDS[index]
    outcomes = {_exercise(seed)}
    for _ in range(CASES_PER_SEED):
        outcomes.add(_exercise(_mutate(rng, seed)))
    assert outcomes  # every case ran to an outcome


def test_fuzz_reaches_every_outcome() -> None:
    """The mutations are not all trivially rejected: all outcome kinds occur."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    for seed in OWN:
        for _ in range(200):
            seen.add(_exercise(_mutate(rng, seed)).split()[0])
    assert seen == {"parse-error", "response", "accepted", "rejected"}


def _frames(framer: StreamFramer, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    frames: list[bytes] = []
    try:
        for chunk in chunks:
            frames.extend(f for f in framer.feed(chunk) if isinstance(f, bytes))
    except SipParseError as exc:
        assert exc.close_connection
        assert framer.failed and framer.error is exc
        return frames, True
    return frames, framer.failed


def _chunk(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_stream_chunking_does_not_matter(index: int) -> None:
    rng = random.Random(SEED * 7 + index)
    seed = SEEDS[index]
    for case in range(30):
        # a stream of several messages, keep-alives between them, sometimes mutated
        parts = [seed, b"\r\n\r\n", rng.choice(OWN), b"\r\n", seed]
        stream = b"".join(parts)
        if case % 3 == 2:
            stream = _mutate(rng, stream)
        whole = _frames(StreamFramer(), [stream])
        chunked = _frames(StreamFramer(), _chunk(rng, stream))
        assert chunked == whole
        for frame in whole[0]:
            try:
                parse_message(frame, stream=True)
            except SipParseError:
                pass
