"""SIP trace ring buffers and structured logging."""

from __future__ import annotations

import logging

import pytest

from app.sip.endpoint import SipEndpoint
from app.sip.events import RequestReceived
from app.sip.message import make_response
from app.sip.trace import NO_CALL_ID, Direction, SipTrace

from .link import UAS_ADDR, Link, make_config, new_request


def _record(trace: SipTrace, call_id: str, n: int, t: float = 0.0) -> None:
    req = new_request("INFO", call_id=call_id, cseq=n)
    req.headers.prepend("Via", f"SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK{n}")
    trace.record(
        time=t,
        direction=Direction.OUT,
        peer=UAS_ADDR,
        transport="UDP",
        data=req.to_bytes(),
        message=req,
    )


def test_records_carry_call_id_branch_and_start_line() -> None:
    trace = SipTrace()
    _record(trace, "c1", 7, t=1.5)
    (rec,) = trace.for_call("c1")
    assert rec.call_id == "c1" and rec.branch == "z9hG4bK7"
    assert rec.time == 1.5 and rec.direction is Direction.OUT
    assert rec.peer == UAS_ADDR and rec.transport == "UDP"
    assert rec.start_line == "INFO sip:bob@127.0.0.2:5062 SIP/2.0"
    assert trace.for_call("unknown") == []


def test_ring_buffer_per_call_is_bounded() -> None:
    trace = SipTrace(per_call=3)
    for n in range(5):
        _record(trace, "c1", n)
    assert [r.branch for r in trace.for_call("c1")] == ["z9hG4bK2", "z9hG4bK3", "z9hG4bK4"]


def test_number_of_calls_is_bounded_least_recent_first() -> None:
    trace = SipTrace(max_calls=2)
    _record(trace, "a", 1)
    _record(trace, "b", 1)
    _record(trace, "a", 2)  # touches "a"
    _record(trace, "c", 1)  # evicts "b"
    assert sorted(trace.call_ids()) == ["a", "c"]
    assert len(trace.for_call("a")) == 2
    trace.forget("a")
    assert list(trace.call_ids()) == ["c"] and len(trace) == 1


def test_garbage_goes_under_no_call_id() -> None:
    trace = SipTrace()
    trace.record(time=0.0, direction=Direction.IN, peer=UAS_ADDR, transport="UDP", data=b"junk")
    (rec,) = trace.for_call(NO_CALL_ID)
    assert rec.call_id is None and rec.branch is None and rec.start_line == "junk"


def test_bad_sizes_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        SipTrace(per_call=0)


def test_endpoint_traces_a_call_in_order() -> None:
    link = Link()
    trace = SipTrace()
    link.uas = SipEndpoint(make_config("uas", "UDP"), trace=trace)
    req = new_request("INVITE", call_id="traced@test")
    link.uac.send_request(req, UAS_ADDR, "UDP", link.now)
    link.pump()
    (ev,) = [e for e in link.events["uas"] if isinstance(e, RequestReceived)]
    assert isinstance(ev, RequestReceived)
    link.clock.now = 2.0
    link.uas.send_response(ev.server_tx, make_response(ev.request, 486), link.now)
    link.pump()
    records = trace.for_call("traced@test")
    assert [(r.direction.value, r.start_line.split(" ")[0:2], r.time) for r in records] == [
        ("in", ["INVITE", "sip:bob@127.0.0.2:5062"], 0.0),
        ("out", ["SIP/2.0", "100"], 0.0),
        ("out", ["SIP/2.0", "486"], 2.0),
        ("in", ["ACK", "sip:bob@127.0.0.2:5062"], 2.0),
    ]
    assert {r.branch for r in records} == {req.top_via.branch}
    assert records[0].peer == link.addr("uac")


def test_structured_logging_carries_call_id_and_branch(caplog: pytest.LogCaptureFixture) -> None:
    link = Link()
    req = new_request("OPTIONS", call_id="logged@test")
    with caplog.at_level(logging.DEBUG, logger="app.sip"):
        link.uac.send_request(req, UAS_ADDR, "UDP", link.now)
        link.pump()
    records = [r for r in caplog.records if r.name == "app.sip"]
    assert records, "no log records"
    sends = [r for r in records if r.getMessage().startswith("send UDP")]
    assert sends and all(getattr(r, "call_id", None) == "logged@test" for r in sends)
    assert {getattr(r, "branch", None) for r in sends} == {req.top_via.branch}


def test_log_messages_writes_each_message_whole(caplog: pytest.LogCaptureFixture) -> None:
    from app.sip.parser import parse_message
    from app.sip.trace import Direction, SipTrace

    data = (
        b"OPTIONS sip:callctl@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKtrace1\r\n"
        b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:callctl@127.0.0.1>\r\n"
        b"Call-ID: trace-log-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    quiet = SipTrace()
    loud = SipTrace(log_messages=True)
    with caplog.at_level("INFO", logger="app.sip.trace"):
        quiet.record(
            time=1.0, direction=Direction.IN, peer=("127.0.0.1", 5070), transport="UDP",
            data=data, message=parse_message(data),
        )  # fmt: skip
        assert caplog.records == []
        loud.record(
            time=1.0, direction=Direction.IN, peer=("127.0.0.1", 5070), transport="UDP",
            data=data, message=parse_message(data),
        )  # fmt: skip
    [record] = caplog.records
    assert record.getMessage().startswith("<< UDP 127.0.0.1:5070\nOPTIONS sip:callctl@")
    assert "Call-ID: trace-log-1" in record.getMessage()
    assert record.call_id == "trace-log-1"  # type: ignore[attr-defined]
    assert record.branch == "z9hG4bKtrace1"  # type: ignore[attr-defined]
    assert len(loud.for_call("trace-log-1")) == 1
