"""Dialogs (RFC 3261 §12): creation, early -> confirmed, route set, target refresh, CSeq,
in-dialog request building with loose and strict routing, ACK (§13.2.2.4), CANCEL (§9.1)."""

from __future__ import annotations

import pytest

from app.sip.dialog import (
    Dialog,
    DialogId,
    DialogRegistry,
    DialogRole,
    DialogState,
    build_cancel,
)
from app.sip.errors import LocalProtocolError, RemoteProtocolError
from app.sip.message import Headers, Request, Response, make_response

ALICE_CONTACT = "<sip:alice@198.51.100.1:5060>"
BOB_CONTACT = "<sip:bob@203.0.113.2:5070>"


def invite(*, record_route: list[str] | None = None, cseq: int = 10) -> Request:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKinv1;rport")
    for rr in record_route or []:
        h.add("Record-Route", rr)
    h.add("Route", "<sip:outbound.example;lr>")
    h.add("From", '"Alice" <sip:alice@example.com>;tag=alicetag')
    h.add("To", "<sip:bob@example.com>")
    h.add("Call-ID", "dlg-call-1")
    h.add("CSeq", f"{cseq} INVITE")
    h.add("Contact", ALICE_CONTACT)
    h.add("Max-Forwards", "70")
    return Request(method="INVITE", uri="sip:bob@example.com", headers=h)


def answer(
    req: Request,
    status: int,
    *,
    tag: str = "bobtag",
    contact: str | None = BOB_CONTACT,
    record_route: list[str] | None = None,
) -> Response:
    resp = make_response(req, status, to_tag=tag)
    for rr in record_route or []:
        resp.headers.add("Record-Route", rr)
    if contact:
        resp.headers.add("Contact", contact)
    return resp


RR = ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]


# -- creation -------------------------------------------------------------------------------


def test_uac_early_dialog_from_1xx_with_tag() -> None:
    req = invite()
    d = Dialog.create_uac(req, answer(req, 180, record_route=RR))
    assert d.role is DialogRole.UAC and d.state is DialogState.EARLY
    assert d.id == DialogId("dlg-call-1", "alicetag", "bobtag")
    assert str(d.remote_target) == "sip:bob@203.0.113.2:5070"
    assert [str(r) for r in d.route_set] == ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
    assert (d.local_seq, d.remote_seq) == (10, None)
    assert d.local_uri.display_name == "Alice" and d.local_uri.tag is None
    assert str(d.remote_uri.uri) == "sip:bob@example.com"
    assert not d.secure


def test_uac_early_then_confirmed_by_2xx() -> None:
    req = invite()
    d = Dialog.create_uac(req, answer(req, 183, record_route=RR))
    ok = answer(req, 200, contact="<sip:bob@203.0.113.9:5080>", record_route=["<sip:p9;lr>"])
    d.receive_response(ok)
    assert d.state is DialogState.CONFIRMED
    assert str(d.remote_target) == "sip:bob@203.0.113.9:5080"
    assert [str(r) for r in d.route_set] == ["<sip:p9;lr>"]  # taken again from the 2xx


def test_uac_confirmed_directly_from_2xx() -> None:
    req = invite()
    d = Dialog.create_uac(req, answer(req, 200))
    assert d.state is DialogState.CONFIRMED


def test_early_dialog_ends_on_non_2xx_final() -> None:
    req = invite()
    d = Dialog.create_uac(req, answer(req, 180))
    d.receive_response(answer(req, 486))
    assert d.state is DialogState.TERMINATED
    with pytest.raises(LocalProtocolError, match="terminated"):
        d.receive_response(answer(req, 200))
    with pytest.raises(LocalProtocolError, match="terminated"):
        d.create_request("BYE")


def test_no_dialog_from_100_or_final_error_or_without_tag() -> None:
    req = invite()
    with pytest.raises(LocalProtocolError):
        Dialog.create_uac(req, answer(req, 100))
    with pytest.raises(LocalProtocolError):
        Dialog.create_uac(req, answer(req, 404))
    no_tag = make_response(req, 100)
    no_tag.status = 180
    with pytest.raises(LocalProtocolError, match="To tag"):
        Dialog.create_uac(req, no_tag)


def test_uas_dialog_from_request_and_our_response() -> None:
    req = invite(record_route=RR)
    ringing = answer(req, 180)
    d = Dialog.create_uas(req, ringing)
    assert d.role is DialogRole.UAS and d.state is DialogState.EARLY
    assert d.id == DialogId("dlg-call-1", "bobtag", "alicetag")
    assert [str(r) for r in d.route_set] == RR  # in order on the UAS side
    assert str(d.remote_target) == "sip:alice@198.51.100.1:5060"
    assert (d.local_seq, d.remote_seq) == (None, 10)
    assert d.local_contact == BOB_CONTACT
    d.response_sent(answer(req, 200))
    assert d.state is DialogState.CONFIRMED
    d.response_sent(answer(req, 200))  # a 2xx retransmission changes nothing
    assert d.state is DialogState.CONFIRMED


def test_uas_early_dialog_rejected() -> None:
    req = invite()
    d = Dialog.create_uas(req, answer(req, 183))
    d.response_sent(answer(req, 603))
    assert d.terminated


def test_sips_request_uri_makes_a_secure_dialog() -> None:
    req = invite()
    req.uri = "sips:bob@example.com"
    assert Dialog.create_uac(req, answer(req, 200)).secure


# -- requests within the dialog -------------------------------------------------------------


def confirmed_uac(route: list[str] | None = None) -> tuple[Request, Dialog]:
    req = invite()
    d = Dialog.create_uac(req, answer(req, 200, record_route=route))
    return req, d


def test_in_dialog_request_without_route_set() -> None:
    _, d = confirmed_uac()
    bye = d.create_request("BYE")
    assert bye.method == "BYE" and bye.uri == "sip:bob@203.0.113.2:5070"
    assert "Route" not in bye.headers and "Via" not in bye.headers
    assert bye.from_.tag == "alicetag" and bye.to.tag == "bobtag"
    assert bye.call_id == "dlg-call-1"
    assert (bye.cseq.seq, bye.cseq.method) == (11, "BYE")
    assert bye.max_forwards == 70
    assert "Contact" not in bye.headers  # not a target refresh request


def test_loose_routing() -> None:
    _, d = confirmed_uac(route=RR)
    info = d.create_request("INFO", body=b"Signal=1\r\n", content_type="application/dtmf-relay")
    assert info.uri == "sip:bob@203.0.113.2:5070"  # §12.2.1.1: remote target
    assert info.headers.get_list("Route") == ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
    assert info.headers.get("Content-Type") == "application/dtmf-relay"
    assert info.body == b"Signal=1\r\n"


def test_strict_routing() -> None:
    _, d = confirmed_uac(
        route=["<sip:p2.example;lr>", "<sip:strict.example;method=INVITE;maddr=10.0.0.1>"]
    )
    # reversed: the strict router is first
    reinvite = d.create_request("INVITE", body=b"v=0\r\n", content_type="application/sdp")
    assert reinvite.uri == "sip:strict.example;maddr=10.0.0.1"  # method= is not allowed there
    assert reinvite.headers.get_list("Route") == [
        "<sip:p2.example;lr>",
        "<sip:bob@203.0.113.2:5070>",  # the remote target goes last
    ]
    assert reinvite.headers.get("Contact") == ALICE_CONTACT  # target refresh: our Contact
    assert d.invite_seq == reinvite.cseq.seq == 11


def test_local_cseq_goes_up_and_uas_starts_randomly() -> None:
    _, d = confirmed_uac()
    assert [d.create_request(m).cseq.seq for m in ("INFO", "UPDATE", "BYE")] == [11, 12, 13]
    req = invite()
    uas = Dialog.create_uas(req, answer(req, 200))
    first = uas.create_request("BYE").cseq.seq
    assert 1 <= first < 2**31
    assert uas.create_request("INFO").cseq.seq == first + 1


def test_remote_cseq_rules() -> None:
    """RFC 3261 §12.2.2: lower CSeq -> 500; higher updates the remote sequence."""
    req = invite(cseq=10)
    d = Dialog.create_uas(req, answer(req, 200))
    bye = d_request(d, "INFO", 12)
    d.receive_request(bye)
    assert d.remote_seq == 12
    with pytest.raises(RemoteProtocolError) as err:
        d.receive_request(d_request(d, "INFO", 11))
    assert err.value.status_hint == 500
    assert d.remote_seq == 12
    d.receive_request(d_request(d, "ACK", 10))  # ACK/CANCEL carry their INVITE's CSeq
    d.receive_request(d_request(d, "CANCEL", 10))
    assert d.remote_seq == 12


def test_uac_empty_remote_seq_takes_the_first_request() -> None:
    _, d = confirmed_uac()
    d.receive_request(d_request(d, "BYE", 1))
    assert d.remote_seq == 1


def d_request(d: Dialog, method: str, seq: int, contact: str | None = None) -> Request:
    """A request the peer sends within ``d``."""
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKin")
    h.add("From", f"<sip:peer@example.com>;tag={d.remote_tag}")
    h.add("To", f"<sip:me@example.com>;tag={d.local_tag}")
    h.add("Call-ID", d.call_id)
    h.add("CSeq", f"{seq} {method}")
    if contact:
        h.add("Contact", contact)
    return Request(method=method, uri="sip:me@example.com", headers=h)


def test_target_refresh_from_requests() -> None:
    req = invite(cseq=1)
    d = Dialog.create_uas(req, answer(req, 200))
    d.receive_request(d_request(d, "INVITE", 2, contact="<sip:alice@192.0.2.50:5090>"))
    assert str(d.remote_target) == "sip:alice@192.0.2.50:5090"
    d.receive_request(d_request(d, "UPDATE", 3, contact="<sip:alice@192.0.2.51>"))
    assert str(d.remote_target) == "sip:alice@192.0.2.51"
    d.receive_request(d_request(d, "INFO", 4, contact="<sip:ignored@192.0.2.99>"))
    assert str(d.remote_target) == "sip:alice@192.0.2.51"  # INFO is no target refresh


def test_target_refresh_from_2xx_to_reinvite_and_481_ends_dialog() -> None:
    _, d = confirmed_uac()
    reinvite = d.create_request("INVITE")
    ok = make_response(reinvite, 200)
    ok.headers.add("Contact", "<sip:bob@203.0.113.77>")
    d.receive_response(ok)
    assert str(d.remote_target) == "sip:bob@203.0.113.77"
    assert d.state is DialogState.CONFIRMED
    info = d.create_request("INFO")
    d.receive_response(make_response(info, 481))
    assert d.terminated


def test_ack_for_2xx() -> None:
    """RFC 3261 §13.2.2.4: like an in-dialog request, CSeq number of the INVITE, method ACK."""
    req, d = confirmed_uac(route=RR)
    ack = d.create_ack(headers=[("Proxy-Authorization", 'Digest username="a"')])
    assert ack.method == "ACK"
    assert (ack.cseq.seq, ack.cseq.method) == (req.cseq.seq, "ACK")
    assert ack.uri == "sip:bob@203.0.113.2:5070"
    assert ack.headers.get_list("Route") == ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
    assert ack.call_id == req.call_id
    assert ack.from_.tag == "alicetag" and ack.to.tag == "bobtag"
    assert ack.headers.get("Proxy-Authorization") == 'Digest username="a"'
    assert "Contact" not in ack.headers
    assert d.local_seq == req.cseq.seq  # the ACK takes no new CSeq
    reinvite = d.create_request("INVITE")
    assert d.create_ack().cseq.seq == reinvite.cseq.seq
    with pytest.raises(LocalProtocolError):
        d.create_request("ACK")


def test_ack_needs_an_invite_cseq_on_the_uas_side() -> None:
    req = invite()
    d = Dialog.create_uas(req, answer(req, 200))
    with pytest.raises(LocalProtocolError, match="give the CSeq"):
        d.create_ack()
    assert d.create_ack(7).cseq.seq == 7


def test_cancel_fields() -> None:
    """RFC 3261 §9.1."""
    req = invite()
    req.headers.add("Via", "SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKsecond")
    cancel = build_cancel(req, reason='SIP;cause=480;text="No answer"')
    assert cancel.method == "CANCEL" and cancel.uri == req.uri
    assert cancel.headers.get_list("Via") == [
        "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKinv1;rport"
    ]
    assert cancel.headers.get("To") == req.headers.get("To")
    assert cancel.headers.get("From") == req.headers.get("From")
    assert cancel.call_id == req.call_id
    assert (cancel.cseq.seq, cancel.cseq.method) == (10, "CANCEL")
    assert cancel.headers.get_list("Route") == ["<sip:outbound.example;lr>"]
    assert cancel.headers.get("Reason") == 'SIP;cause=480;text="No answer"'
    assert cancel.body == b""
    req.headers.remove("Via")
    with pytest.raises(LocalProtocolError, match="no Via"):
        build_cancel(req)


def test_registry() -> None:
    req = invite()
    d = Dialog.create_uas(req, answer(req, 200))
    reg = DialogRegistry()
    reg.register(d)
    assert len(reg) == 1 and d in reg
    assert reg.find(d.id) is d
    assert reg.find_for_request(d_request(d, "BYE", 11)) is d
    other = d_request(d, "BYE", 11)
    other.headers.set("To", "<sip:me@example.com>;tag=unknown")
    assert reg.find_for_request(other) is None
    d.terminate()
    assert reg.find_for_request(d_request(d, "BYE", 12)) is None  # terminated ones vanish
    assert len(reg) == 0
    with pytest.raises(LocalProtocolError):
        reg.register(d)
    uac_req, uac = confirmed_uac()
    reg.register(uac)
    assert reg.find_for_response(answer(uac_req, 200)) is uac
    reg.unregister(uac.id)
    assert reg.find(uac.id) is None


def test_responses_of_other_forks_are_refused() -> None:
    req = invite()
    d = Dialog.create_uac(req, answer(req, 180, tag="fork1"))
    d.receive_response(make_response(req, 100))  # no tag: nothing to learn, no error
    assert d.state is DialogState.EARLY
    with pytest.raises(LocalProtocolError, match="another dialog"):
        d.receive_response(answer(req, 200, tag="fork2"))
    assert d.state is DialogState.EARLY
