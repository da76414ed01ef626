"""Inviter: outbound calls between two user agents (and against a hand-played far end)."""

from __future__ import annotations

import asyncio

from app.sip.digest import build_challenge, parse_credentials, verify_credentials
from app.sip.events import AckReceived, RequestReceived
from app.sip.headers import parse_name_addr
from app.sip.message import Request
from app.ua import Credentials, EndBy, EndCause, SessionEnd, SessionState
from tests.ua.conftest import B_URI, Pair, RawB
from tests.ua.link import ADDRS, request, response
from tests.ua.raw import reply, sdp

S = SessionState


async def test_basic_call_then_local_bye(pair: Pair) -> None:
    inviter, rec = await pair.call()
    invitation = pair.callee.last
    assert pair.link.summary() == ["a INVITE", "b 100", "b 180"]
    assert inviter.state is S.ESTABLISHING
    assert invitation.state is S.INITIAL
    assert rec.trying == 1
    assert rec.progress == [(180, "Ringing", False)]

    await invitation.accept()
    await pair.link.settle()
    assert pair.link.summary()[3:] == ["b 200", "a ACK"]
    assert inviter.state is S.ESTABLISHED and invitation.state is S.ESTABLISHED
    assert rec.answered == 1 and pair.callee.rec.answered == 1
    # Both media handlers agreed on the other's RTP port.
    assert inviter.sdh is not None and invitation.sdh is not None
    a_media = inviter.sdh.negotiated  # type: ignore[attr-defined]
    b_media = invitation.sdh.negotiated  # type: ignore[attr-defined]
    assert a_media.remote_port == b_media.local_port
    assert b_media.remote_port == a_media.local_port

    await inviter.bye()
    assert inviter.state is S.TERMINATING
    ended = asyncio.create_task(inviter.wait_ended())
    await pair.link.settle()
    assert await ended == SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
    assert pair.link.summary()[5:] == ["a BYE", "b 200"]
    assert inviter.end == SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
    assert invitation.end == SessionEnd(EndCause.REMOTE_BYE, EndBy.REMOTE)
    assert rec.states == [S.ESTABLISHING, S.ESTABLISHED, S.TERMINATING, S.TERMINATED]
    assert pair.callee.rec.states == [S.ESTABLISHING, S.ESTABLISHED, S.TERMINATED]
    assert pair.a.sessions == {} and pair.b.sessions == {}
    assert len(pair.link.endpoint("a").dialogs) == 0
    assert len(pair.link.endpoint("b").dialogs) == 0


async def test_invite_is_built_as_documented(pair: Pair) -> None:
    await pair.call(
        from_uri="sip:alice@example.com",
        display_name="Alice A",
        extra_headers=[("X-Tenant", "t1"), ("X-Tag", "one"), ("X-Tag", "two")],
    )
    invite = pair.link.sent("a", request("INVITE"))[0].message
    assert isinstance(invite, Request)
    assert invite.uri == B_URI
    assert str(invite.to.uri) == B_URI and invite.to.tag is None
    assert str(invite.from_.uri) == "sip:alice@example.com"
    assert invite.from_.display_name == "Alice A" and invite.from_.tag
    assert invite.cseq.seq == 1 and invite.cseq.method == "INVITE"
    assert invite.call_id
    contact = parse_name_addr(invite.headers.get_list("Contact")[0])
    assert str(contact.uri) == "sip:alice@127.0.0.1:5070;transport=udp"
    assert "BYE" in invite.headers.get_list("Allow")
    assert invite.headers.get_list("Supported") == ["100rel"]
    assert invite.headers.get_all("X-Tag") == ["one", "two"]
    assert invite.headers.get("X-Tenant") == "t1"
    assert invite.headers.get("Content-Type") == "application/sdp"
    assert b"m=audio" in invite.body
    assert "Route" not in invite.headers


async def test_default_from_and_outbound_proxy_route(pair: Pair) -> None:
    link = pair.link
    proxied = link.add_ua("a", pair.factory, user="alice", outbound_proxy="sip:127.0.0.2:5080")
    pair.a = proxied
    await pair.call()
    invite = link.sent("a", request("INVITE"))[0]
    assert isinstance(invite.message, Request)
    assert invite.message.headers.get_list("Route") == ["<sip:127.0.0.2:5080;lr>"]
    assert str(invite.message.from_.uri) == "sip:alice@127.0.0.1"
    assert invite.dst == "b"


async def test_remote_bye(pair: Pair) -> None:
    inviter, _rec, invitation, _brec = await pair.established()
    await invitation.bye()
    await pair.link.settle()
    assert inviter.end == SessionEnd(EndCause.REMOTE_BYE, EndBy.REMOTE)
    assert invitation.end == SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
    bye = pair.link.sent("b", request("BYE"))[0].message
    assert isinstance(bye, Request)
    # The callee's BYE goes to the caller's Contact, in the caller's dialog.
    assert bye.uri == "sip:alice@127.0.0.1:5070;transport=udp"
    assert bye.to.tag == inviter.local_tag and bye.from_.tag == invitation.local_tag


async def test_reject_486(pair: Pair) -> None:
    inviter, _rec = await pair.call()
    invitation = pair.callee.last
    await invitation.reject(486)
    await pair.link.settle()
    assert pair.link.summary() == ["a INVITE", "b 100", "b 180", "b 486", "a ACK"]
    assert inviter.end == SessionEnd(EndCause.REJECTED, EndBy.REMOTE, 486, "Busy Here")
    assert invitation.end == SessionEnd(EndCause.REJECTED, EndBy.LOCAL, 486, "Busy Here")
    assert inviter.last_response == (486, "Busy Here")
    assert inviter.sdh is not None and inviter.sdh.state == "closed"  # type: ignore[attr-defined]


async def test_cancel_before_answer(pair: Pair) -> None:
    inviter, rec = await pair.call()
    invitation = pair.callee.last
    await inviter.cancel()
    assert inviter.state is S.TERMINATING
    await pair.link.settle()
    assert pair.link.summary()[3:] == ["a CANCEL", "b 200", "b 487", "a ACK"]
    assert inviter.end == SessionEnd(EndCause.CANCELED, EndBy.LOCAL)
    assert invitation.end == SessionEnd(EndCause.CANCELED, EndBy.REMOTE)
    assert rec.states[-2:] == [S.TERMINATING, S.TERMINATED]


async def test_ring_timeout_cancels_and_ends_no_answer(pair: Pair) -> None:
    inviter, _rec = await pair.call(timeout=5)
    await pair.link.advance(4.9)
    assert inviter.state is S.ESTABLISHING
    assert not pair.link.sent("a", request("CANCEL"))
    await pair.link.advance(0.2)
    assert pair.link.times("a", request("CANCEL")) == [5.0]
    assert inviter.end == SessionEnd(EndCause.NO_ANSWER, EndBy.SYSTEM)
    assert pair.callee.last.end == SessionEnd(EndCause.CANCELED, EndBy.REMOTE)


async def test_digest_407_one_retry(raw_b: RawB) -> None:
    inviter, _rec, got = await raw_b.invite(credentials=Credentials("alice", "s3cret"))
    first = got.request
    challenge = build_challenge(realm="proxy.test", nonce="n0nce", qop=("auth",))
    raw_b.respond(got, reply(first, 407, headers=[("Proxy-Authenticate", challenge)]))
    await raw_b.link.settle()
    retries = [e for e in raw_b.link.take("b", RequestReceived) if e.request.method == "INVITE"]
    assert len(retries) == 1
    second = retries[0].request
    assert second.call_id == first.call_id
    assert second.from_.tag == first.from_.tag
    assert second.cseq.seq == first.cseq.seq + 1
    assert second.top_via.branch != first.top_via.branch
    assert second.body == first.body  # the same offer
    creds = parse_credentials(second.headers.get("Proxy-Authorization") or "")
    assert creds.realm == "proxy.test" and creds.username == "alice" and creds.uri == second.uri
    assert verify_credentials(creds, method="INVITE", password="s3cret")
    assert not verify_credentials(creds, method="INVITE", password="wrong")
    assert inviter.state is S.ESTABLISHING

    ok = reply(second, 200, tag="uas1", body=sdp(40000))
    raw_b.respond(retries[0], ok)
    await raw_b.link.settle()
    assert inviter.state is S.ESTABLISHED
    acks = raw_b.link.take("b", AckReceived)
    assert len(acks) == 1
    ack = acks[0].request
    assert ack.cseq.seq == second.cseq.seq and ack.cseq.method == "ACK"
    assert ack.headers.get("Proxy-Authorization") == second.headers.get("Proxy-Authorization")
    snap = inviter.snapshot()
    assert snap.invite_cseq == 2 and snap.remote_tag == "uas1"
    assert snap.invite_branch == second.top_via.branch


async def test_second_challenge_is_rejected(raw_b: RawB) -> None:
    inviter, _rec, got = await raw_b.invite(credentials=Credentials("alice", "s3cret"))
    challenge = build_challenge(realm="r", nonce="n1")
    raw_b.respond(got, reply(got.request, 401, headers=[("WWW-Authenticate", challenge)]))
    await raw_b.link.settle()
    retry = [e for e in raw_b.link.take("b", RequestReceived) if e.request.method == "INVITE"]
    assert len(retry) == 1 and "Authorization" in retry[0].request.headers
    challenge2 = build_challenge(realm="r", nonce="n2")
    raw_b.respond(
        retry[0], reply(retry[0].request, 401, headers=[("WWW-Authenticate", challenge2)])
    )
    await raw_b.link.settle()
    assert not raw_b.link.take("b", RequestReceived)  # no third INVITE
    assert inviter.end == SessionEnd(EndCause.REJECTED, EndBy.REMOTE, 401, "Unauthorized")


async def test_challenge_without_credentials_is_rejected(raw_b: RawB) -> None:
    inviter, _rec, got = await raw_b.invite()
    challenge = build_challenge(realm="r", nonce="n1")
    raw_b.respond(got, reply(got.request, 407, headers=[("Proxy-Authenticate", challenge)]))
    await raw_b.link.settle()
    assert inviter.end is not None and inviter.end.sip_code == 407
    assert inviter.end.cause == EndCause.REJECTED
    assert len(raw_b.link.sent("a", request("INVITE"))) == 1


async def test_redirect_is_reported_not_followed(raw_b: RawB) -> None:
    inviter, rec, got = await raw_b.invite()
    raw_b.respond(got, reply(got.request, 302, headers=[("Contact", "<sip:carol@127.0.0.2:5080>")]))
    await raw_b.link.settle()
    assert [r.status for r in rec.redirects] == [302]
    assert inviter.end == SessionEnd(EndCause.REJECTED, EndBy.REMOTE, 302, "Moved Temporarily")
    assert len(raw_b.link.sent("a", request("INVITE"))) == 1


async def test_timer_b_fails_the_call(raw_b: RawB) -> None:
    raw_b.link.drop(lambda w: w.src == "b")  # the far end's answers never arrive
    inviter, _rec = raw_b.inviter()
    await inviter.invite()
    await raw_b.link.advance(31.9)
    assert inviter.state is S.ESTABLISHING
    await raw_b.link.advance(0.2)
    assert inviter.end is not None
    assert inviter.end.cause == EndCause.FAILED and inviter.end.by == EndBy.SYSTEM
    assert "Timer B" in (inviter.end.reason or "")


async def test_cancel_crossing_200_acks_then_byes(raw_b: RawB) -> None:
    inviter, rec, got = await raw_b.invite()
    raw_b.respond(got, reply(got.request, 180, tag="x1"))
    await raw_b.link.settle()
    # The 200 leaves the far end before our CANCEL gets there.
    raw_b.respond(got, reply(got.request, 200, tag="x1", body=sdp(40002)))
    await inviter.cancel()
    await raw_b.link.settle()
    assert raw_b.link.summary("a") == ["a INVITE", "a CANCEL", "a ACK", "a BYE"]
    bye = raw_b.link.sent("a", request("BYE"))[0].message
    assert isinstance(bye, Request) and bye.to.tag == "x1"
    assert inviter.end == SessionEnd(EndCause.CANCELED, EndBy.LOCAL)
    assert rec.answered == 0


async def test_answer_without_common_codec_acks_byes_and_fails(raw_b: RawB) -> None:
    inviter, rec, got = await raw_b.invite()
    raw_b.respond(got, reply(got.request, 200, tag="g7", body=sdp(40004, codecs="g729")))
    await raw_b.link.settle()
    assert raw_b.link.summary("a") == ["a INVITE", "a ACK", "a BYE"]
    assert inviter.end == SessionEnd(EndCause.FAILED, EndBy.SYSTEM, None, "no common codec")
    assert rec.answered == 0


async def test_2xx_retransmissions_are_acked_each_time(pair: Pair) -> None:
    pair.link.drop(request("ACK"), count=2)
    inviter, rec = await pair.call()
    invitation = pair.callee.last
    await invitation.accept()
    await pair.link.advance(2.0)
    oks = pair.link.times("b", response(200, "INVITE"))
    acks = pair.link.times("a", request("ACK"))
    assert oks == [0.0, 0.5, 1.5]
    assert acks == oks  # every 2xx got its ACK, the third one arrived
    ack_bytes = {w.data for w in pair.link.sent("a", request("ACK"))}
    assert len(ack_bytes) == 1  # the very same ACK each time
    await pair.link.advance(40)
    assert len(pair.link.sent("b", response(200, "INVITE"))) == 3  # retransmission stopped
    assert inviter.state is S.ESTABLISHED and invitation.state is S.ESTABLISHED
    assert rec.answered == 1


async def test_snapshot_and_dialog_changes(pair: Pair) -> None:
    inviter, rec, invitation, brec = await pair.established()
    a, b = inviter.snapshot(), invitation.snapshot()
    assert a.call_id == b.call_id == inviter.call_id
    assert a.local_tag == b.remote_tag and a.remote_tag == b.local_tag
    assert a.local_cseq == 1 and b.remote_cseq == 1 and a.invite_cseq == 1
    assert a.remote_target == "sip:bob@127.0.0.2:5080;transport=udp"
    assert b.remote_target == "sip:alice@127.0.0.1:5070;transport=udp"
    assert a.peer == ADDRS["b"] and b.peer == ADDRS["a"]
    assert a.transport == "udp" and a.route_set == ()
    invite = pair.link.sent("a", request("INVITE"))[0].message
    assert isinstance(invite, Request)
    assert a.invite_branch == b.invite_branch == invite.top_via.branch
    assert rec.snapshots[-1] == a and brec.snapshots[-1] == b
    await inviter.bye()
    await pair.link.settle()
    assert rec.snapshots[-1].local_cseq == 2  # the BYE took CSeq 2


async def test_transport_error_fails_the_call(raw_b: RawB) -> None:
    inviter, _rec, _got = await raw_b.invite()
    tx = inviter._invite_tx
    assert tx is not None
    raw_b.link.endpoint("a").report_transport_error(tx, "ICMP port unreachable", raw_b.link.now)
    await raw_b.link.settle()
    assert inviter.end is not None
    assert inviter.end.cause == EndCause.FAILED and inviter.end.by == EndBy.SYSTEM
    assert "ICMP port unreachable" in (inviter.end.reason or "")


async def test_duck_typed_delegate_may_lack_callbacks(pair: Pair) -> None:
    class OnlyEnded:
        def __init__(self) -> None:
            self.ends: list[SessionEnd] = []

        def on_ended(self, session: object, end: SessionEnd) -> None:
            self.ends.append(end)

    inviter, _ = pair.inviter()
    only = OnlyEnded()
    inviter.delegate = only  # type: ignore[assignment]
    await inviter.invite()
    await pair.link.settle()
    await pair.callee.last.reject(603)
    await pair.link.settle()
    assert only.ends == [SessionEnd(EndCause.REJECTED, EndBy.REMOTE, 603, "Decline")]
