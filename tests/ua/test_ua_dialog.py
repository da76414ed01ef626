"""In-dialog requests: re-INVITE (hold), UPDATE, OPTIONS, INFO / DTMF, 481 after the end."""

from __future__ import annotations

from app.media import Direction
from app.sip.message import Response
from app.ua import EndBy, EndCause, SessionEnd, SessionState
from app.ua.invitation import Invitation
from tests.ua.conftest import Pair, RawA
from tests.ua.link import Recorder, request, response
from tests.ua.raw import sdp

S = SessionState


async def established_raw(raw_a: RawA) -> tuple[Invitation, Recorder]:
    """Raw caller -> Bob accepts -> raw caller ACKs."""
    raw_a.uac.send_invite(sdp(43000))
    await raw_a.link.settle()
    invitation = raw_a.callee.last
    await invitation.accept()
    await raw_a.link.settle()
    ok = raw_a.uac.responses(200)[0]
    raw_a.uac.ack(ok)
    await raw_a.link.settle()
    assert invitation.state is S.ESTABLISHED
    return invitation, raw_a.callee.rec


def last_response(raw_a: RawA, method: str) -> Response:
    found = [
        w.message
        for w in raw_a.link.sent("b")
        if isinstance(w.message, Response) and w.message.cseq.method == method
    ]
    assert found, f"no response to {method}"
    return found[-1]


async def test_reinvite_hold_and_resume(raw_a: RawA) -> None:
    invitation, rec = await established_raw(raw_a)
    assert invitation.remote_hold is False
    raw_a.uac.send_in_dialog("INVITE", sdp(43000, direction="sendonly", session=4243))
    await raw_a.link.settle()
    ok = last_response(raw_a, "INVITE")
    assert ok.status == 200 and ok.cseq.seq == 2
    assert b"a=recvonly" in ok.body  # answering a hold
    assert rec.media_changes == 1 and invitation.remote_hold is True
    assert invitation.sdh.negotiated.direction is Direction.RECVONLY  # type: ignore[union-attr]
    raw_a.uac.ack(ok)
    await raw_a.link.settle()
    assert invitation.snapshot().remote_cseq == 2
    raw_a.uac.send_in_dialog("INVITE", sdp(43000, session=4244))
    await raw_a.link.settle()
    resumed = last_response(raw_a, "INVITE")
    assert resumed.status == 200 and b"a=sendrecv" in resumed.body
    raw_a.uac.ack(resumed)
    await raw_a.link.settle()
    assert rec.media_changes == 2 and invitation.remote_hold is False
    assert invitation.state is S.ESTABLISHED
    await raw_a.link.advance(40)
    # Each 2xx was ACKed: no retransmission, no BYE.
    assert len([w for w in raw_a.link.sent("b", response(200, "INVITE"))]) == 3
    assert invitation.state is S.ESTABLISHED


async def test_reinvite_refused_media_gets_488_and_keeps_the_call(raw_a: RawA) -> None:
    invitation, rec = await established_raw(raw_a)
    before = invitation.sdh.negotiated  # type: ignore[union-attr]
    raw_a.uac.send_in_dialog("INVITE", sdp(43002, codecs="g729", session=4245))
    await raw_a.link.settle()
    assert last_response(raw_a, "INVITE").status == 488
    assert invitation.state is S.ESTABLISHED and rec.media_changes == 0
    assert invitation.sdh.negotiated == before  # type: ignore[union-attr]


async def test_offerless_reinvite_and_491_while_offer_pending(raw_a: RawA) -> None:
    invitation, rec = await established_raw(raw_a)
    raw_a.uac.send_in_dialog("INVITE")  # no body: we offer in the 2xx
    await raw_a.link.settle()
    ok = last_response(raw_a, "INVITE")
    assert ok.status == 200 and b"m=audio" in ok.body
    # A second re-INVITE while our offer waits for its answer in the ACK.
    raw_a.uac.send_in_dialog("INVITE", sdp(43004, session=4246))
    await raw_a.link.settle()
    assert last_response(raw_a, "INVITE").status == 491
    raw_a.uac.ack(ok, body=sdp(43006, session=4247))
    await raw_a.link.settle()
    assert rec.media_changes == 1
    assert invitation.sdh.negotiated.remote_port == 43006  # type: ignore[union-attr]


async def test_update_with_offer(raw_a: RawA) -> None:
    _invitation, rec = await established_raw(raw_a)
    raw_a.uac.send_in_dialog("UPDATE", sdp(43008, direction="inactive", session=4248))
    await raw_a.link.settle()
    ok = last_response(raw_a, "UPDATE")
    assert ok.status == 200 and b"a=inactive" in ok.body
    assert rec.media_changes == 1


async def test_options_and_info_in_dialog_answered_200(raw_a: RawA) -> None:
    _invitation, rec = await established_raw(raw_a)
    raw_a.uac.send_in_dialog("OPTIONS")
    await raw_a.link.settle()
    options_ok = last_response(raw_a, "OPTIONS")
    assert options_ok.status == 200 and "INVITE" in options_ok.headers.get_list("Allow")
    raw_a.uac.send_in_dialog("INFO", "Signal=7\r\nDuration=160\r\n", "application/dtmf-relay")
    await raw_a.link.settle()
    assert last_response(raw_a, "INFO").status == 200
    raw_a.uac.send_in_dialog("INFO", "some text", "text/plain")
    await raw_a.link.settle()
    assert last_response(raw_a, "INFO").status == 200
    assert rec.dtmf == ["7"]
    assert [i.headers.get("Content-Type") for i in rec.infos] == [
        "application/dtmf-relay",
        "text/plain",
    ]


async def test_unknown_in_dialog_method_gets_501(raw_a: RawA) -> None:
    await established_raw(raw_a)
    raw_a.uac.send_in_dialog("REFER")
    await raw_a.link.settle()
    assert last_response(raw_a, "REFER").status == 501


async def test_dtmf_by_info_goes_one_at_a_time(pair: Pair) -> None:
    inviter, _rec, _invitation, brec = await pair.established()
    pair.link.drop(request("INFO"), count=1)  # the first INFO is lost once
    await inviter.dtmf("1#b")
    await pair.link.settle()
    assert len(pair.link.sent("a", request("INFO"))) == 1
    await pair.link.advance(0.5)  # Timer E retransmits the first; the next follow its 200
    assert brec.dtmf == ["1", "#", "B"]
    infos = pair.link.delivered("a", request("INFO"))
    assert [w.message.cseq.seq for w in infos] == [2, 3, 4]
    assert inviter.state is S.ESTABLISHED


async def test_requests_after_the_end_get_481(raw_a: RawA) -> None:
    invitation, rec = await established_raw(raw_a)
    raw_a.uac.send_in_dialog("BYE")
    await raw_a.link.settle()
    assert invitation.end == SessionEnd(EndCause.REMOTE_BYE, EndBy.REMOTE)
    raw_a.uac.send_in_dialog("INFO", "Signal=1\r\n", "application/dtmf-relay")
    await raw_a.link.settle()
    assert last_response(raw_a, "INFO").status == 481
    assert rec.dtmf == []


async def test_crossing_byes(pair: Pair) -> None:
    inviter, _rec, invitation, _brec = await pair.established()
    await inviter.bye()
    await invitation.bye()
    await pair.link.settle()
    assert inviter.end == SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
    assert invitation.end == SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
    assert pair.a.sessions == {} and pair.b.sessions == {}
