"""SipEndpoint: what it answers by itself, CANCEL, dialogs, RFC 3581, drops and stats."""

from __future__ import annotations

import pytest

from app.sip.dialog import Dialog, build_cancel
from app.sip.endpoint import DropReason, EndpointConfig, Outgoing, SipEndpoint
from app.sip.errors import LocalProtocolError
from app.sip.events import (
    AckReceived,
    CancelReceived,
    MessageDropped,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from app.sip.message import Request, Response, make_response
from app.sip.parser import parse_message
from app.sip.timers import TimerName
from app.sip.transactions import ClientTransactionId, TxState

from .link import UAC_ADDR, UAS_ADDR, Link, is_method, is_status, make_config, new_request


def _responses(link: Link, side: str = "uac") -> list[tuple[int, str]]:
    return [
        (e.response.status, e.response.cseq.method)
        for e in link.events[side]
        if isinstance(e, ResponseReceived)
    ]


def _incoming(link: Link) -> RequestReceived:
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    return ev


# -- CANCEL ------------------------------------------------------------------------------------


def test_cancel_flow_gives_200_and_487() -> None:
    link = Link()
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    ev = _incoming(link)
    invite_server = link.uas.transaction(ev.server_tx)
    ringing = make_response(ev.request, 180, to_tag="early1")
    link.uas.send_response(ev.server_tx, ringing, link.now)
    link.pump()
    cancel_key = link.uac.send_cancel(key, link.now)
    assert cancel_key == ClientTransactionId(branch=key.branch, method="CANCEL")
    link.pump()
    cancels = link.take("uas", CancelReceived)
    assert len(cancels) == 1
    cancel_ev = cancels[0]
    assert isinstance(cancel_ev, CancelReceived)
    assert cancel_ev.server_tx == ev.server_tx and not cancel_ev.invite_answered
    assert _responses(link) == [(100, "INVITE"), (180, "INVITE"), (200, "CANCEL"), (487, "INVITE")]
    (cancel_wire,) = link.sent("uac", is_method("CANCEL"))
    assert isinstance(cancel_wire.message, Request)
    assert cancel_wire.message.top_via.branch == key.branch
    (ok,) = link.sent("uas", is_status(200, "CANCEL"))
    (terminated,) = link.sent("uas", is_status(487))
    assert isinstance(ok.message, Response) and isinstance(terminated.message, Response)
    assert ok.message.to.tag == terminated.message.to.tag == "early1"  # §9.2: same To tag
    assert len(link.sent("uac", is_method("ACK"))) == 1  # the 487 is ACKed by the ICT
    assert invite_server is not None and invite_server.state is TxState.CONFIRMED
    assert link.uas.stats["answered_487"] == 1
    # The TU can no longer answer the cancelled INVITE.
    with pytest.raises(LocalProtocolError):
        link.uas.send_response(ev.server_tx, make_response(ev.request, 200), link.now)


def test_cancel_waits_for_a_provisional_response() -> None:
    """RFC 3261 §9.1: no CANCEL before a provisional response arrived."""
    link = Link(uas_config=make_config("uas", "UDP", send_trying=False))
    link.drop(is_method("INVITE"), count=1)
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    assert link.uac.send_cancel(key, link.now) is not None
    link.pump()
    assert link.sent("uac", is_method("CANCEL")) == []
    link.run_until(0.5)  # the INVITE retransmission gets through
    ev = _incoming(link)
    link.uas.send_response(ev.server_tx, make_response(ev.request, 183, to_tag="e"), link.now)
    link.pump()
    assert [w.time for w in link.sent("uac", is_method("CANCEL"))] == [0.5]
    assert (487, "INVITE") in _responses(link)


def test_cancel_after_final_response_sends_nothing() -> None:
    link = Link()
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    ev = _incoming(link)
    link.uas.send_response(ev.server_tx, make_response(ev.request, 486), link.now)
    link.pump()
    assert link.uac.send_cancel(key, link.now) is None
    link.pump()
    assert link.sent("uac", is_method("CANCEL")) == []
    with pytest.raises(LocalProtocolError):
        link.uac.send_cancel(ClientTransactionId(branch="z9hG4bKx", method="BYE"), link.now)


def test_cancel_after_2xx_is_answered_but_does_not_touch_the_invite() -> None:
    link = Link()
    req = new_request("INVITE")
    link.uac.send_request(req, UAS_ADDR, "UDP", link.now)
    link.pump()
    ev = _incoming(link)
    link.uas.send_response(ev.server_tx, make_response(ev.request, 200, to_tag="t"), link.now)
    link.pump()
    # A CANCEL that crossed the 2xx (sent statelessly here to force the race).
    link.uas.receive(build_cancel(req).to_bytes(), UAC_ADDR, "UDP", link.now)
    link.pump()
    (cancel_ev,) = link.take("uas", CancelReceived)
    assert isinstance(cancel_ev, CancelReceived) and cancel_ev.invite_answered
    assert link.sent("uas", is_status(487)) == []
    assert len(link.sent("uas", is_status(200, "CANCEL"))) == 1


def test_cancel_matching_nothing_gets_481() -> None:
    link = Link()
    req = new_request("INVITE")
    req.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKnothere")
    link.inject("uas", build_cancel(req).to_bytes(), UAC_ADDR)
    assert [w.status for w in link.sent("uas")] == [481]
    assert link.events["uas"] == []


# -- dialogs through the endpoint --------------------------------------------------------------


def test_unknown_dialog_gets_481() -> None:
    link = Link()
    key = link.uac.send_request(new_request("BYE", to_tag="nosuch"), UAS_ADDR, "UDP", link.now)
    link.pump()
    assert _responses(link) == [(481, "BYE")]
    assert link.events["uas"] == []
    assert link.uas.stats["answered_481"] == 1
    assert link.uac.transaction_state(key) is TxState.COMPLETED


def test_unknown_dialog_passes_when_configured() -> None:
    link = Link(uas_config=make_config("uas", "UDP", reject_unknown_dialogs=False))
    link.uac.send_request(new_request("BYE", to_tag="nosuch"), UAS_ADDR, "UDP", link.now)
    link.pump()
    ev = _incoming(link)
    assert ev.dialog is None and ev.request.method == "BYE"


def _established(link: Link) -> tuple[Dialog, Dialog, Request]:
    """An INVITE/200/ACK through the link with dialogs registered on both sides."""
    invite = new_request("INVITE")
    key = link.uac.send_request(invite, UAS_ADDR, "UDP", link.now)
    link.pump()
    ev = _incoming(link)
    ok = make_response(ev.request, 200, to_tag="uas-tag")
    ok.headers.add("Contact", f"<sip:bob@{UAS_ADDR[0]}:{UAS_ADDR[1]}>")
    uas_dialog = Dialog.create_uas(ev.request, ok)
    link.uas.dialogs.register(uas_dialog)
    link.uas.send_response(ev.server_tx, ok, link.now)
    link.pump()
    (resp_ev,) = [e for e in link.take("uac", ResponseReceived) if e.response.status == 200]
    assert isinstance(resp_ev, ResponseReceived) and resp_ev.client_tx == key
    uac_dialog = Dialog.create_uac(invite, resp_ev.response)
    link.uac.dialogs.register(uac_dialog)
    link.uac.send_stateless(uac_dialog.create_ack(), UAS_ADDR, "UDP", link.now)
    link.pump()
    link.events["uac"].clear()
    return uac_dialog, uas_dialog, invite


def test_ack_and_bye_in_dialog() -> None:
    link = Link()
    uac_dialog, uas_dialog, _ = _established(link)
    (ack_ev,) = link.take("uas", AckReceived)
    assert isinstance(ack_ev, AckReceived)
    assert ack_ev.dialog is uas_dialog and ack_ev.server_tx is None
    bye = uac_dialog.create_request("BYE")
    link.uac.send_request(bye, UAS_ADDR, "UDP", link.now)
    link.pump()
    ev = _incoming(link)
    assert ev.dialog is uas_dialog
    assert uas_dialog.remote_seq == bye.cseq.seq
    link.uas.send_response(ev.server_tx, make_response(ev.request, 200), link.now)
    link.pump()
    assert _responses(link) == [(200, "BYE")]


def test_lower_cseq_in_dialog_gets_500() -> None:
    link = Link()
    uac_dialog, uas_dialog, _ = _established(link)
    info = uac_dialog.create_request("INFO")
    link.uac.send_request(info, UAS_ADDR, "UDP", link.now)
    link.pump()
    _incoming(link)
    stale = uac_dialog.create_request("INFO")
    stale.headers.set("CSeq", "1 INFO")
    link.uac.send_request(stale, UAS_ADDR, "UDP", link.now)
    link.pump()
    assert _responses(link)[-1] == (500, "INFO")
    assert link.take("uas", RequestReceived) == []
    assert uas_dialog.remote_seq == info.cseq.seq
    assert link.uas.stats["answered_500"] == 1


def test_reinvite_target_refresh_applied_on_receipt() -> None:
    link = Link()
    uac_dialog, uas_dialog, _ = _established(link)
    uac_dialog.local_contact = "<sip:alice@127.0.0.1:5061;ob>"
    link.uac.send_request(uac_dialog.create_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    ev = _incoming(link)
    assert ev.dialog is uas_dialog
    assert str(uas_dialog.remote_target) == "sip:alice@127.0.0.1:5061;ob"


# -- the endpoint's own answers -----------------------------------------------------------------


def test_options_answered_by_the_endpoint() -> None:
    link = Link()
    link.uac.send_request(new_request("OPTIONS"), UAS_ADDR, "UDP", link.now)
    link.pump()
    (ok,) = link.sent("uas")
    assert isinstance(ok.message, Response) and ok.message.status == 200
    h = ok.message.headers
    assert "INVITE" in h.get_list("Allow") and "BYE" in h.get_list("Allow")
    assert h.get_list("Accept") == ["application/sdp"]
    assert h.get_list("Supported") == ["100rel", "replaces", "timer"]
    assert ok.message.to.tag
    assert link.events["uas"] == []


def test_options_to_the_tu_when_not_answered() -> None:
    link = Link(uas_config=make_config("uas", "UDP", answer_options=False))
    link.uac.send_request(new_request("OPTIONS"), UAS_ADDR, "UDP", link.now)
    link.pump()
    assert _incoming(link).request.method == "OPTIONS"
    assert link.sent("uas") == []


def test_validation_answers() -> None:
    link = Link()
    link.uac.send_request(new_request("FOO"), UAS_ADDR, "UDP", link.now)
    link.uac.send_request(
        new_request("INVITE", extra=[("Require", "foo-ext")]), UAS_ADDR, "UDP", link.now
    )
    link.pump()
    statuses = sorted(s for s, _ in _responses(link) if s >= 200)
    assert statuses == [420, 501]
    assert link.events["uas"] == []
    # The 420 to the INVITE is ACKed and the server transaction confirmed, like any other.
    assert len(link.sent("uac", is_method("ACK"))) == 1


def test_merged_request_gets_482() -> None:
    """RFC 3261 §8.2.2.2: same From tag, Call-ID and CSeq, another branch, no To tag."""
    link = Link()
    first = new_request("INFO", call_id="merged@test")
    second = new_request("INFO", call_id="merged@test")
    link.uac.send_request(first, UAS_ADDR, "UDP", link.now)
    link.uac.send_request(second, UAS_ADDR, "UDP", link.now)
    link.pump()
    assert len(link.take("uas", RequestReceived)) == 1
    assert _responses(link) == [(482, "INFO")]


def test_stray_response_is_dropped_and_counted() -> None:
    link = Link()
    req = new_request("BYE")
    req.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKstray")
    link.inject("uac", make_response(req, 200).to_bytes(), UAS_ADDR)
    assert link.events["uac"] == [
        MessageDropped(reason="stray_response", source=UAS_ADDR, transport="UDP", detail="200 BYE")
    ]
    assert link.uac.stats["dropped_stray_response"] == 1


def test_stray_2xx_to_invite_still_reaches_the_tu() -> None:
    link = Link()
    req = new_request("INVITE")
    req.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKforked")
    link.inject("uac", make_response(req, 200, to_tag="fork2").to_bytes(), UAS_ADDR)
    (ev,) = link.events["uac"]
    assert isinstance(ev, ResponseReceived) and ev.client_tx is None
    assert ev.response.to.tag == "fork2"


def test_garbage_is_dropped_and_counted() -> None:
    link = Link()
    link.inject("uas", b"\x00\x01 not sip at all\r\n\r\n", UAC_ADDR)
    assert link.sent("uas") == []
    (ev,) = link.events["uas"]
    assert isinstance(ev, MessageDropped) and ev.reason == DropReason.GARBAGE
    assert link.uas.stats["dropped_garbage"] == 1


def test_unparseable_but_answerable_request_gets_400() -> None:
    link = Link()
    data = (
        b"INVITE sip:bob@127.0.0.2:5062 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKbad\r\n"
        b"From: <sip:alice@127.0.0.1>;tag=a\r\n"
        b"To: <sip:bob@127.0.0.2>\r\n"
        b"Call-ID: bad@test\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Length: 99\r\n\r\n"
        b"short"
    )
    link.inject("uas", data, UAC_ADDR)
    (w,) = link.sent("uas")
    assert w.status == 400
    assert isinstance(w.message, Response) and w.message.call_id == "bad@test"
    assert link.uas.stats["answered_400"] == 1


def test_invalid_ack_is_dropped_silently() -> None:
    link = Link()
    ack = new_request("ACK", to_tag="x")
    ack.headers.set("CSeq", "1 INVITE")  # CSeq method mismatch
    ack.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKack")
    link.inject("uas", ack.to_bytes(), UAC_ADDR)
    assert link.sent("uas") == []
    (ev,) = link.events["uas"]
    assert isinstance(ev, MessageDropped) and ev.reason == DropReason.INVALID_ACK


def test_keepalives_are_ignored() -> None:
    link = Link()
    link.inject("uas", b"\r\n\r\n", UAC_ADDR)
    assert link.events["uas"] == [] and link.uas.stats["keepalives"] == 1


# -- RFC 2543 matching -------------------------------------------------------------------------


def test_rfc2543_request_without_magic_cookie() -> None:
    ep = SipEndpoint(EndpointConfig(local_host="192.0.2.1"))
    req = new_request("INVITE")
    req.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.9:5060;branch=oldstyle1")
    data = req.to_bytes()
    ep.receive(data, ("192.0.2.9", 5060), "UDP", 0.0)
    ev = ep.next_event()
    assert isinstance(ev, RequestReceived) and ev.server_tx.branch.startswith("rfc2543:")
    assert [parse_message(o.data).status for o in ep.outgoing()] == [100]  # type: ignore[union-attr]
    ep.receive(data, ("192.0.2.9", 5060), "UDP", 0.1)  # retransmission: same transaction
    assert ep.next_event() is None
    assert [parse_message(o.data).status for o in ep.outgoing()] == [100]  # type: ignore[union-attr]
    busy = make_response(ev.request, 486, to_tag="bt")
    ep.send_response(ev.server_tx, busy, 0.2)
    ep.outgoing()
    ack = new_request("ACK", call_id=req.call_id, to_tag="bt")
    ack.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.9:5060;branch=oldstyle1")
    ack.uri = req.uri
    ep.receive(ack.to_bytes(), ("192.0.2.9", 5060), "UDP", 0.3)
    assert ep.next_event() is None  # the ACK matched the INVITE transaction
    assert ep.transaction_state(ev.server_tx) is TxState.CONFIRMED


# -- RFC 3581 and response routing (RFC 3261 §18.2.2) ------------------------------------------


def _bare_endpoint() -> SipEndpoint:
    return SipEndpoint(EndpointConfig(local_host="192.0.2.1", transports=("udp", "tcp")))


def test_rport_and_received_steer_the_response() -> None:
    ep = _bare_endpoint()
    req = new_request("INFO")
    req.headers.prepend("Via", "SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bKnat;rport")
    ep.receive(req.to_bytes(), ("203.0.113.5", 40000), "UDP", 0.0)
    ev = ep.next_event()
    assert isinstance(ev, RequestReceived)
    via = ev.request.top_via
    assert (via.received, via.rport) == ("203.0.113.5", 40000)
    ep.send_response(ev.server_tx, make_response(ev.request, 200), 0.0)
    (out,) = ep.outgoing()
    assert out.addr == ("203.0.113.5", 40000)
    resp = parse_message(out.data)
    assert isinstance(resp, Response)
    assert "received=203.0.113.5" in resp.headers.get_list("Via")[0]
    assert "rport=40000" in resp.headers.get_list("Via")[0]


def test_received_without_rport_uses_the_via_port() -> None:
    ep = _bare_endpoint()
    req = new_request("INFO")
    req.headers.prepend("Via", "SIP/2.0/UDP pbx.example.com:5070;branch=z9hG4bKname")
    ep.receive(req.to_bytes(), ("203.0.113.5", 40000), "UDP", 0.0)
    ev = ep.next_event()
    assert isinstance(ev, RequestReceived)
    assert ev.request.top_via.received == "203.0.113.5"
    assert ev.request.top_via.rport is None
    ep.send_response(ev.server_tx, make_response(ev.request, 200), 0.0)
    assert ep.outgoing()[0].addr == ("203.0.113.5", 5070)


def test_same_host_without_rport_is_left_alone() -> None:
    ep = _bare_endpoint()
    req = new_request("INFO")
    req.headers.prepend("Via", "SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKplain")
    ep.receive(req.to_bytes(), ("203.0.113.5", 40000), "UDP", 0.0)
    ev = ep.next_event()
    assert isinstance(ev, RequestReceived)
    assert ev.request.top_via.received is None
    ep.send_response(ev.server_tx, make_response(ev.request, 200), 0.0)
    assert ep.outgoing()[0].addr == ("203.0.113.5", 5060)


def test_tcp_responses_go_back_to_the_source() -> None:
    ep = _bare_endpoint()
    req = new_request("INFO")
    req.headers.prepend("Via", "SIP/2.0/TCP 10.1.1.1:5070;branch=z9hG4bKtcp")
    ep.receive(req.to_bytes(), ("203.0.113.5", 51234), "tcp", 0.0)
    ev = ep.next_event()
    assert isinstance(ev, RequestReceived) and ev.transport == "TCP"
    ep.send_response(ev.server_tx, make_response(ev.request, 200), 0.0)
    (out,) = ep.outgoing()
    assert (out.addr, out.transport) == (("203.0.113.5", 51234), "TCP")


# -- sending rules and errors ---------------------------------------------------------------------


def test_send_request_adds_via_and_defaults() -> None:
    ep = _bare_endpoint()
    req = new_request("OPTIONS")
    req.headers.remove("Max-Forwards")
    key = ep.send_request(req, ("192.0.2.2", 5060), "udp", 0.0)
    (out,) = ep.outgoing()
    assert out == Outgoing(out.data, ("192.0.2.2", 5060), "UDP", key)
    sent = parse_message(out.data)
    assert isinstance(sent, Request)
    via = sent.top_via
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.1", 5060)
    assert via.branch == key.branch and via.branch.startswith("z9hG4bK")
    assert via.has_rport and via.rport is None
    assert sent.max_forwards == 70
    assert sent.headers.get("User-Agent") == "callctl/0.1"
    assert sent.headers.get("Content-Length") == "0"
    assert ep.sent_request(key) is req  # Via added in place


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
def test_send_request_refuses_ack_and_cancel(method: str) -> None:
    with pytest.raises(LocalProtocolError):
        _bare_endpoint().send_request(new_request(method), ("192.0.2.2", 5060), "UDP", 0.0)


def test_send_request_refuses_a_request_with_via() -> None:
    ep = _bare_endpoint()
    req = new_request("INFO")
    ep.send_request(req, ("192.0.2.2", 5060), "UDP", 0.0)
    with pytest.raises(LocalProtocolError, match="already has a Via"):
        ep.send_request(req, ("192.0.2.2", 5060), "UDP", 0.0)


def test_transport_error_ends_the_client_transaction() -> None:
    ep = _bare_endpoint()
    key = ep.send_request(new_request("INVITE"), ("192.0.2.2", 5060), "TCP", 0.0)
    (out,) = ep.outgoing()
    tx = ep.transaction(key)
    ep.report_transport_error(out.tx, "connection refused", 0.0)
    assert ep.next_event() == TransportErrorOccurred(tx=key, error="connection refused")
    assert tx is not None and tx.state is TxState.TERMINATED
    assert ep.get_timer() is None
    ep.report_transport_error(None, "stateless send failed", 1.0)
    assert ep.next_event() == TransportErrorOccurred(tx=None, error="stateless send failed")
    assert ep.stats["transport_errors"] == 2


def test_timer_b_event_and_timer_api() -> None:
    ep = _bare_endpoint()
    key = ep.send_request(new_request("INVITE"), ("192.0.2.2", 5060), "UDP", 100.0)
    assert ep.get_timer() == 100.5
    ep.handle_timer(100.4)  # too early: nothing happens
    assert len(ep.outgoing()) == 1
    ep.handle_timer(100.5)
    assert len(ep.outgoing()) == 1  # one retransmission
    assert ep.get_timer() == 101.5
    ep.handle_timer(200.0)  # late: everything due fires, B included
    assert ep.next_event() == TransactionTimedOut(tx=key, timer=TimerName.B)
    assert ep.get_timer() is None


def test_cancel_with_only_trying_sent_uses_one_fresh_tag() -> None:
    link = Link()
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    _incoming(link)
    assert link.uac.send_cancel(key, link.now) is not None  # the 100 Trying allows it
    link.pump()
    (ok,) = link.sent("uas", is_status(200, "CANCEL"))
    (terminated,) = link.sent("uas", is_status(487))
    assert isinstance(ok.message, Response) and isinstance(terminated.message, Response)
    assert ok.message.to.tag and ok.message.to.tag == terminated.message.to.tag


def test_transport_error_in_accepted_invite_server_keeps_the_state() -> None:
    """RFC 6026 §7.1: Accepted reports a transport error and stays."""
    link = Link()
    link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    ev = _incoming(link)
    link.uas.send_response(ev.server_tx, make_response(ev.request, 200, to_tag="t"), link.now)
    link.pump()
    link.uas.report_transport_error(ev.server_tx, "unreachable", link.now)
    assert link.uas.next_event() == TransportErrorOccurred(tx=ev.server_tx, error="unreachable")
    assert link.uas.transaction_state(ev.server_tx) is TxState.ACCEPTED
