"""Invitation: inbound calls (rules 5 and 6), against our own caller or a raw one."""

from __future__ import annotations

import asyncio
import ipaddress

from app.sip.message import Request, Response, make_response
from app.ua import Credentials, EndBy, EndCause, SessionEnd, SessionState
from tests.ua.conftest import RawA, TrackingFactory, make_pair, make_raw_a
from tests.ua.link import request, response
from tests.ua.raw import sdp

S = SessionState


def only(items: list[Response]) -> Response:
    assert len(items) == 1, items
    return items[0]


async def test_auto_180_after_100(raw_a: RawA) -> None:
    raw_a.uac.send_invite(sdp(42000))
    await raw_a.link.settle()
    assert raw_a.link.summary("b") == ["b 100", "b 180"]
    invitation = raw_a.callee.last
    assert invitation.auto_provisional is True
    assert invitation.last_response == (180, "Ringing")
    ringing = only(raw_a.uac.responses(180))
    assert ringing.to.tag == invitation.local_tag
    assert ringing.headers.get_list("Contact") == ["<sip:bob@127.0.0.2:5080;transport=udp>"]
    assert "Require" not in ringing.headers
    assert invitation.state is S.INITIAL
    assert invitation.allowed_actions() == ("progress", "accept", "reject", "hangup")
    assert invitation.request.call_id == raw_a.uac.call_id
    assert invitation.body is not None and "m=audio 42000" in invitation.body.content


async def test_no_auto_180_when_configured_off(factory: TrackingFactory) -> None:
    raw = make_raw_a(factory, auto_provisional=False)
    raw.uac.send_invite(sdp(42002))
    await raw.link.settle()
    assert raw.link.summary("b") == ["b 100"]
    assert raw.callee.last.auto_provisional is False


async def test_no_auto_180_when_100rel_required(raw_a: RawA) -> None:
    raw_a.uac.extra = [("Require", "100rel"), ("Supported", "100rel")]
    raw_a.uac.send_invite(sdp(42004))
    await raw_a.link.settle()
    assert raw_a.link.summary("b") == ["b 100"]
    assert raw_a.callee.last.auto_provisional is False


async def test_reliable_180_and_prack_then_accept(factory: TrackingFactory) -> None:
    pair = make_pair(factory, auto_provisional=False)
    inviter, _rec = await pair.call()
    invitation = pair.callee.last
    await invitation.progress(180, reliable=True)
    await pair.link.settle()
    ringing = pair.link.sent("b", response(180))[0].message
    assert isinstance(ringing, Response)
    assert ringing.headers.get_list("Require") == ["100rel"]
    rseq = int(ringing.headers.get("RSeq") or "0")
    assert 1 <= rseq < 2**31
    prack = pair.link.sent("a", request("PRACK"))[0].message
    assert isinstance(prack, Request)
    assert prack.headers.get("RAck") == f"{rseq} 1 INVITE"
    assert prack.to.tag == invitation.local_tag
    assert pair.link.summary()[-1] == "b 200"  # the PRACK's 200
    await invitation.accept()
    await pair.link.settle()
    assert inviter.state is S.ESTABLISHED and invitation.state is S.ESTABLISHED
    # A second reliable provisional would have carried RSeq + 1; none is retransmitted.
    await pair.link.advance(5)
    assert len(pair.link.sent("b", response(180))) == 1


async def test_accept_waits_for_the_outstanding_prack(factory: TrackingFactory) -> None:
    pair = make_pair(factory, auto_provisional=False)
    pair.link.drop(request("PRACK"), count=1)
    inviter, _rec = await pair.call()
    invitation = pair.callee.last
    await invitation.progress(183, reliable=True)
    await pair.link.settle()
    accepting = asyncio.create_task(invitation.accept())
    await pair.link.settle()
    assert not accepting.done()
    assert invitation.state is S.ESTABLISHING
    assert invitation.allowed_actions() == ("reject", "hangup")
    assert not pair.link.sent("b", response(200, "INVITE"))
    await pair.link.advance(0.5)  # the PRACK is retransmitted (Timer E) and answered
    await accepting
    ok_times = pair.link.times("b", response(200, "INVITE"))
    prack_times = [w.time for w in pair.link.delivered("a", request("PRACK"))]
    assert prack_times == [0.5] and ok_times == [0.5]
    assert inviter.state is S.ESTABLISHED


async def test_no_prack_rejects_504_after_64_t1(factory: TrackingFactory) -> None:
    pair = make_pair(factory, auto_provisional=False)
    pair.link.drop(request("PRACK"))
    inviter, _rec = await pair.call()
    invitation = pair.callee.last
    await invitation.progress(180, reliable=True)
    await pair.link.advance(40)
    # RFC 3262 §3: T1, doubling, until 64*T1.
    assert pair.link.times("b", response(180)) == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert pair.link.times("b", response(504)) == [32.0]
    assert invitation.end == SessionEnd(EndCause.FAILED, EndBy.SYSTEM, 504, "no PRACK")
    assert inviter.end is not None and inviter.end.sip_code == 504
    assert inviter.end.cause == EndCause.REJECTED


async def test_reliable_requested_without_peer_support_goes_unreliable(raw_a: RawA) -> None:
    raw_a.uac.send_invite(sdp(42006))
    await raw_a.link.settle()
    await raw_a.callee.last.progress(183, reliable=True)
    await raw_a.link.settle()
    progress = only(raw_a.uac.responses(183))
    assert "RSeq" not in progress.headers and "Require" not in progress.headers


async def test_prack_not_matching_gets_481(factory: TrackingFactory) -> None:
    raw = make_raw_a(factory, auto_provisional=False)
    raw.uac.extra = [("Supported", "100rel")]
    invite = raw.uac.send_invite(sdp(42008))
    await raw.link.settle()
    await raw.callee.last.progress(180, reliable=True)
    await raw.link.settle()
    ringing = only(raw.uac.responses(180))
    rseq = int(ringing.headers.get("RSeq") or "0")
    raw.uac.confirm(ringing)
    assert raw.uac.dialog is not None
    wrong = raw.uac.dialog.create_request("PRACK", headers=[("RAck", f"{rseq + 7} 1 INVITE")])
    raw.link.core("a").send_request(wrong)
    await raw.link.settle()
    assert raw.link.summary("b")[-1] == "b 481"
    right = raw.uac.dialog.create_request("PRACK", headers=[("RAck", f"{rseq} 1 INVITE")])
    raw.link.core("a").send_request(right)
    await raw.link.settle()
    assert raw.link.summary("b")[-1] == "b 200"
    assert invite.call_id == raw.callee.last.call_id


async def test_inbound_timeout_rejects_480(factory: TrackingFactory) -> None:
    pair = make_pair(factory, inbound_timeout=10)
    inviter, _rec = await pair.call()
    await pair.link.advance(9.9)
    assert pair.callee.last.state is S.INITIAL
    await pair.link.advance(0.2)
    assert pair.link.times("b", response(480)) == [10.0]
    assert pair.callee.last.end == SessionEnd(EndCause.NO_ANSWER, EndBy.SYSTEM, 480)
    assert inviter.end == SessionEnd(
        EndCause.REJECTED, EndBy.REMOTE, 480, "Temporarily Unavailable"
    )


async def test_lost_ack_retransmits_2xx_then_byes_at_64_t1(factory: TrackingFactory) -> None:
    pair = make_pair(factory)
    pair.link.drop(request("ACK"))
    inviter, _rec = await pair.call()
    invitation = pair.callee.last
    await invitation.accept()
    await pair.link.advance(31.9)
    assert invitation.state is S.ESTABLISHED
    await pair.link.advance(5)
    # RFC 3261 §13.3.1.4: T1 doubling up to T2, for 64*T1.
    assert pair.link.times("b", response(200, "INVITE")) == [
        0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]  # fmt: skip
    assert pair.link.times("b", request("BYE")) == [32.0]
    assert invitation.end == SessionEnd(EndCause.FAILED, EndBy.SYSTEM, None, "no ACK")
    # Alice ACKed every 2xx (all lost), then got the BYE.
    assert len(pair.link.sent("a", request("ACK"))) == 11
    assert inviter.end == SessionEnd(EndCause.REMOTE_BYE, EndBy.REMOTE)


async def test_offerless_invite_answer_in_ack(raw_a: RawA) -> None:
    raw_a.uac.send_invite()
    await raw_a.link.settle()
    invitation = raw_a.callee.last
    await invitation.accept()
    await raw_a.link.settle()
    ok = only(raw_a.uac.responses(200))
    assert b"m=audio" in ok.body  # our offer
    raw_a.uac.ack(ok, body=sdp(42010))
    await raw_a.link.settle()
    assert invitation.state is S.ESTABLISHED
    assert invitation.sdh.negotiated.remote_port == 42010  # type: ignore[union-attr]
    await raw_a.link.advance(5)
    assert len(raw_a.uac.responses(200)) == 1  # the ACK stopped the retransmissions


async def test_offerless_invite_ack_without_answer_byes_and_fails(raw_a: RawA) -> None:
    raw_a.uac.send_invite()
    await raw_a.link.settle()
    invitation = raw_a.callee.last
    await invitation.accept()
    await raw_a.link.settle()
    raw_a.uac.ack(only(raw_a.uac.responses(200)))
    await raw_a.link.settle()
    assert raw_a.link.summary("b")[-1] == "b BYE"
    assert invitation.end == SessionEnd(
        EndCause.FAILED, EndBy.SYSTEM, None, "ACK without an answer"
    )


async def test_accept_with_unacceptable_offer_sends_488(raw_a: RawA) -> None:
    raw_a.uac.send_invite(sdp(42012, codecs="g729"))
    await raw_a.link.settle()
    invitation = raw_a.callee.last
    await invitation.accept()
    await raw_a.link.settle()
    assert raw_a.link.summary("b")[-1] == "b 488"
    assert invitation.end == SessionEnd(EndCause.FAILED, EndBy.SYSTEM, 488, "no common codec")


async def test_non_sdp_body_gets_415(raw_a: RawA) -> None:
    invite = raw_a.uac.make_invite()
    invite.headers.add("Content-Type", "text/plain")
    invite.body = b"hello"
    raw_a.uac.invite = invite
    raw_a.link.core("a").send_request(invite)
    await raw_a.link.settle()
    assert raw_a.link.summary("b") == ["b 100", "b 415"]
    assert raw_a.callee.invitations == []  # refused before on_invite
    assert raw_a.b.sessions == {}


async def test_caller_bye_on_early_dialog(raw_a: RawA) -> None:
    raw_a.uac.send_invite(sdp(42014))
    await raw_a.link.settle()
    raw_a.uac.confirm(only(raw_a.uac.responses(180)))
    raw_a.uac.send_in_dialog("BYE")
    await raw_a.link.settle()
    assert raw_a.link.summary("b")[-2:] == ["b 200", "b 487"]
    assert raw_a.callee.last.end == SessionEnd(EndCause.CANCELED, EndBy.REMOTE)


async def test_bye_before_ack_waits_for_the_ack(raw_a: RawA) -> None:
    raw_a.uac.send_invite(sdp(42016))
    await raw_a.link.settle()
    invitation = raw_a.callee.last
    await invitation.accept()
    await raw_a.link.settle()
    await invitation.bye()
    await raw_a.link.settle()
    assert invitation.state is S.TERMINATING
    assert not raw_a.link.sent("b", request("BYE"))  # RFC 3261 §15: not before the ACK
    raw_a.uac.ack(only(raw_a.uac.responses(200)))
    await raw_a.link.settle()
    byes = raw_a.uac.requests("BYE")
    assert len(byes) == 1
    raw_a.link.core("a").send_response(byes[0].server_tx, _ok(byes[0].request))
    await raw_a.link.settle()
    assert invitation.end == SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)


def _ok(req: Request) -> Response:
    return make_response(req, 200)


async def test_inbound_allow_list_refuses_with_403(factory: TrackingFactory) -> None:
    pair = make_pair(factory, inbound_allow=(ipaddress.ip_network("10.0.0.0/8"),))
    inviter, _rec = await pair.call()
    assert pair.link.summary() == ["a INVITE", "b 100", "b 403", "a ACK"]
    assert pair.callee.invitations == []
    assert inviter.end is not None and inviter.end.sip_code == 403


async def test_inbound_allow_list_lets_listed_callers_in(factory: TrackingFactory) -> None:
    pair = make_pair(factory, inbound_allow=(ipaddress.ip_network("127.0.0.0/8"),))
    await pair.call()
    assert len(pair.callee.invitations) == 1


async def test_inbound_digest_challenge(factory: TrackingFactory) -> None:
    pair = make_pair(factory, inbound_auth=(("alice", "pw"),), auth_realm="callctl.test")
    refused, _ = await pair.call()
    assert refused.end is not None and refused.end.sip_code == 401
    assert pair.callee.invitations == []
    wrong, _ = await pair.call(credentials=Credentials("alice", "nope"))
    assert wrong.end is not None and wrong.end.sip_code == 401
    assert pair.callee.invitations == []
    inviter, _rec = await pair.call(credentials=Credentials("alice", "pw"))
    assert inviter.state is S.ESTABLISHING
    assert len(pair.callee.invitations) == 1
    assert pair.callee.last.request.cseq.seq == 2


async def test_offerless_invite_early_offer_in_reliable_183(factory: TrackingFactory) -> None:
    raw = make_raw_a(factory, auto_provisional=False)
    raw.uac.extra = [("Supported", "100rel")]
    raw.uac.send_invite()
    await raw.link.settle()
    invitation = raw.callee.last
    await invitation.progress(183, reliable=True, early_media=True)
    await raw.link.settle()
    early = only(raw.uac.responses(183))
    assert b"m=audio" in early.body and early.headers.get("RSeq")
    assert invitation.early_media is False  # our offer is not answered yet
    raw.uac.confirm(early)
    assert raw.uac.dialog is not None
    prack = raw.uac.dialog.create_request(
        "PRACK",
        body=sdp(42020).encode(),
        content_type="application/sdp",
        headers=[("RAck", f"{early.headers.get('RSeq')} 1 INVITE")],
    )
    raw.link.core("a").send_request(prack)
    await raw.link.settle()
    assert invitation.early_media is True and raw.callee.rec.early == 1
    await invitation.accept()
    await raw.link.settle()
    ok = only([r for r in raw.uac.responses(200) if r.cseq.method == "INVITE"])
    assert ok.body == b""  # the offer/answer exchange already happened
    raw.uac.ack(ok)
    await raw.link.settle()
    assert invitation.state is S.ESTABLISHED
    assert invitation.sdh.negotiated.remote_port == 42020  # type: ignore[union-attr]


async def test_no_free_rtp_port_gets_503_with_retry_after() -> None:
    from app.media import PortPool, RtpSdhFactory
    from tests.media.conftest import LOOPBACK
    from tests.ua.conftest import free_port_range

    low, _high = free_port_range(2)
    pool = PortPool(low, low + 1)  # one RTP/RTCP pair
    held = await pool.acquire(LOOPBACK)  # ... and it is taken
    try:
        raw_a = make_raw_a(TrackingFactory(RtpSdhFactory(LOOPBACK, LOOPBACK, pool)))
        raw_a.uac.send_invite(sdp(42014))
        await raw_a.link.settle()
        invitation = raw_a.callee.last
        await invitation.accept()
        await raw_a.link.settle()
        sent = [w.message for w in raw_a.link.sent("b") if isinstance(w.message, Response)]
        final = sent[-1]
        assert final.status == 503
        assert final.headers.get("Retry-After") == "1"
        assert invitation.end is not None and invitation.end.sip_code == 503
    finally:
        held.close()
