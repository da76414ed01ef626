"""RFC 4475 / RFC 5118 torture messages, read in place from ../shared/sip-torture.

Each message is checked as a UDP datagram (parse_message + validate_request, or
salvage_request when it does not parse) and, unless the RFC test is UDP-only, through
the TCP StreamFramer. Nothing may raise anything but SipParseError.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from app.sip.errors import SipParseError
from app.sip.message import Message, Request, Response, make_response
from app.sip.parser import StreamFramer, parse_message
from app.sip.validate import salvage_request, validate_request

CORPUS = (Path(__file__).resolve().parents[2] / ".." / "shared" / "sip-torture").resolve()
ALLOWED = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "PRACK", "UPDATE", "REFER",
           "NOTIFY")
SUPPORTED = ("100rel", "replaces", "timer")


def _entries() -> list[Any]:
    index = CORPUS / "index.json"
    if not index.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"SIP torture corpus not found at {CORPUS} (expected msgs/*.dat + index.json)"
        ))]
    messages = json.loads(index.read_text())["messages"]
    return [pytest.param(m, id=m["name"]) for m in messages]


ENTRIES = _entries()


def _data(entry: dict[str, Any]) -> bytes:
    return (CORPUS / entry["file"]).read_bytes()


def _touch(msg: Message) -> None:
    """Read every structured view; only SipParseError may come out."""
    views = ("call_id", "cseq", "vias", "top_via", "from_", "to", "max_forwards", "contacts",
             "record_routes", "routes")
    for name in views:
        try:
            getattr(msg, name)
        except SipParseError:
            pass
    if isinstance(msg, Request):
        try:
            msg.parsed_uri()
        except SipParseError:
            pass


def _validate(req: Request) -> Response | None:
    return validate_request(
        req,
        allowed_methods=ALLOWED,
        supported=SUPPORTED,
        accepted_content_types=("application/sdp",),
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_sha256(entry: dict[str, Any]) -> None:
    data = _data(entry)
    assert len(data) == entry["bytes"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_datagram(entry: dict[str, Any]) -> None:
    data = _data(entry)
    valid = entry["rfc_class"] == "valid"
    codes = set(entry["acceptable_codes"])
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert not valid, f"valid message rejected by the parser: {exc!r}"
        salvaged = salvage_request(data)
        if entry["kind"] == "response":
            assert salvaged is None  # a response is never answered
        elif salvaged is not None:
            # answered statelessly: the status must be one the RFC allows
            assert exc.status_hint in (codes or {400})
            resp = make_response(salvaged, exc.status_hint)
            assert parse_message(resp.to_bytes()) == resp
        return

    _touch(msg)
    assert parse_message(msg.to_bytes()) == msg
    if entry["kind"] == "response":
        assert isinstance(msg, Response)
        return
    assert isinstance(msg, Request)
    assert msg.method == entry["method"]
    resp = _validate(msg)
    if valid:
        if resp is not None:
            assert resp.status in codes, f"valid message answered {resp.status} {resp.reason}"
    elif entry["liberal_ok"]:
        assert resp is None or 400 <= resp.status < 600
    else:
        assert resp is not None, "invalid message accepted"
        assert resp.status in (codes or {400}), (resp.status, resp.reason)
    if resp is not None:
        assert parse_message(resp.to_bytes()) == resp


@pytest.mark.parametrize("entry", ENTRIES)
def test_byte_faithful_round_trip(entry: dict[str, Any]) -> None:
    data = _data(entry)
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    head, _, body = data.partition(b"\r\n\r\n")
    cl = msg.headers.get("Content-Length")
    if cl is not None and cl.isdigit() and int(cl) == len(body):
        assert msg.to_bytes() == data
    else:
        assert msg.to_bytes().startswith(head)  # only Content-Length and the body differ


@pytest.mark.parametrize("entry", ENTRIES)
def test_stream(entry: dict[str, Any]) -> None:
    if entry["udp_only"]:
        pytest.skip("RFC test defined for UDP only")
    data = _data(entry)
    framer = StreamFramer()
    try:
        frames = framer.feed(data)
    except SipParseError as exc:
        assert exc.close_connection
        assert entry["rfc_class"] == "invalid"
        return
    if entry["rfc_class"] == "valid":
        assert frames == [data]
    for frame in frames:
        assert isinstance(frame, bytes)
        try:
            msg = parse_message(frame, stream=True)
        except SipParseError:
            assert entry["rfc_class"] == "invalid"
            continue
        _touch(msg)
        if isinstance(msg, Request):
            _validate(msg)
    # byte by byte gives the same frames
    slow = StreamFramer()
    got: list[object] = []
    for i in range(len(data)):
        got.extend(slow.feed(data[i : i + 1]))
    assert got == frames


def test_expected_outcomes_cover_the_corpus() -> None:
    """A few named cases, so a silent change of policy shows up here."""
    if not (CORPUS / "index.json").is_file():
        pytest.skip(f"SIP torture corpus not found at {CORPUS}")
    results: dict[str, object] = {}
    for name in ("mismatch01", "badvers", "bext01", "unkscm", "intmeth", "zeromf", "clerr",
                 "insuf", "multi01", "ipv6-bad", "invut", "dblreq"):
        data = (CORPUS / "msgs" / f"{name}.dat").read_bytes()
        try:
            req = parse_message(data)
        except SipParseError as exc:
            results[name] = f"parse {exc.status_hint}"
            continue
        assert isinstance(req, Request)
        resp = _validate(req)
        results[name] = None if resp is None else resp.status
    assert results == {
        "mismatch01": 400, "badvers": 505, "bext01": 420, "unkscm": 416, "intmeth": 501,
        "zeromf": None, "clerr": "parse 400", "insuf": 400, "multi01": 400, "ipv6-bad": 400,
        "invut": 415, "dblreq": 405,
    }
