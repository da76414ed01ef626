"""Rules 1-4: early media, offer-less INVITEs and forking (a hand-played forking far end)."""

from __future__ import annotations

from app.media import SdhState
from app.sip.events import RequestReceived
from app.sip.message import Request
from app.ua import EndBy, EndCause, SessionEnd, SessionState
from tests.ua.conftest import Pair, RawB
from tests.ua.link import request, response
from tests.ua.raw import reply, sdp

S = SessionState


def sent_requests(raw_b: RawB, method: str) -> list[Request]:
    out = []
    for w in raw_b.link.sent("a", request(method)):
        assert isinstance(w.message, Request)
        out.append(w.message)
    return out


async def test_provisional_answer_ignored_without_early_media(raw_b: RawB) -> None:
    inviter, rec, got = await raw_b.invite()
    raw_b.respond(got, reply(got.request, 183, tag="f1", body=sdp(41000)))
    await raw_b.link.settle()
    assert inviter.early_media is False and rec.early == 0
    assert rec.progress == [(183, "Session Progress", False)]
    assert inviter.sdh is not None and inviter.sdh.negotiated is None  # type: ignore[attr-defined]
    raw_b.respond(got, reply(got.request, 200, tag="f1", body=sdp(41002)))
    await raw_b.link.settle()
    assert inviter.state is S.ESTABLISHED
    # Rule 1: the 2xx's answer is the one applied.
    assert inviter.sdh.negotiated.remote_port == 41002  # type: ignore[attr-defined]


async def test_2xx_without_sdp_uses_the_provisional_answer(raw_b: RawB) -> None:
    inviter, _rec, got = await raw_b.invite()
    raw_b.respond(got, reply(got.request, 183, tag="f1", body=sdp(41010)))
    raw_b.respond(got, reply(got.request, 200, tag="f1"))
    await raw_b.link.settle()
    assert inviter.state is S.ESTABLISHED
    assert inviter.sdh.negotiated.remote_port == 41010  # type: ignore[union-attr]


async def test_early_media_starts_with_the_first_provisional_answer(raw_b: RawB) -> None:
    inviter, rec, got = await raw_b.invite(early_media=True)
    raw_b.respond(got, reply(got.request, 183, tag="f1", body=sdp(41020)))
    await raw_b.link.settle()
    assert inviter.early_media is True and rec.early == 1
    assert rec.progress == [(183, "Session Progress", True)]
    assert inviter.sdh.negotiated.remote_port == 41020  # type: ignore[union-attr]
    # A second provisional answer (another fork) is not applied.
    raw_b.respond(got, reply(got.request, 183, tag="f2", body=sdp(41022)))
    await raw_b.link.settle()
    assert inviter.sdh.negotiated.remote_port == 41020  # type: ignore[union-attr]
    raw_b.respond(got, reply(got.request, 200, tag="f1", body=sdp(41024)))
    await raw_b.link.settle()
    assert inviter.state is S.ESTABLISHED
    # Rule 1: one offer/answer exchange; the early answer stays in force.
    assert inviter.sdh.negotiated.remote_port == 41020  # type: ignore[union-attr]
    assert inviter.snapshot().remote_tag == "f1"


async def test_early_media_forbids_forking(raw_b: RawB) -> None:
    inviter, rec, got = await raw_b.invite(early_media=True)
    raw_b.respond(got, reply(got.request, 183, tag="f1", body=sdp(41030)))
    await raw_b.link.settle()
    raw_b.respond(got, reply(got.request, 200, tag="f2", body=sdp(41032)))
    await raw_b.link.settle()
    acks, byes = sent_requests(raw_b, "ACK"), sent_requests(raw_b, "BYE")
    assert [a.to.tag for a in acks] == ["f2"] and [b.to.tag for b in byes] == ["f2"]
    assert inviter.end is not None
    assert inviter.end.cause == EndCause.FAILED and inviter.end.by == EndBy.SYSTEM
    assert rec.answered == 0


async def test_forking_first_2xx_wins_later_ones_acked_and_byed(raw_b: RawB) -> None:
    inviter, rec, got = await raw_b.invite()
    req = got.request
    raw_b.respond(got, reply(req, 180, tag="t1"))
    raw_b.respond(got, reply(req, 180, tag="t2"))
    await raw_b.link.settle()
    assert [p[0] for p in rec.progress] == [180, 180]
    assert len(raw_b.link.endpoint("a").dialogs) == 2  # two early dialogs
    raw_b.respond(got, reply(req, 200, tag="t2", body=sdp(41040)))
    await raw_b.link.settle()
    assert inviter.state is S.ESTABLISHED and inviter.snapshot().remote_tag == "t2"
    assert len(raw_b.link.endpoint("a").dialogs) == 1
    raw_b.respond(got, reply(req, 200, tag="t1", body=sdp(41042)))
    await raw_b.link.settle()
    acks, byes = sent_requests(raw_b, "ACK"), sent_requests(raw_b, "BYE")
    assert [a.to.tag for a in acks] == ["t2", "t1"]
    assert [b.to.tag for b in byes] == ["t1"]
    assert inviter.state is S.ESTABLISHED and inviter.snapshot().remote_tag == "t2"
    assert inviter.sdh.negotiated.remote_port == 41040  # type: ignore[union-attr]
    # A retransmission of the losing 2xx gets the same ACK again, no second BYE.
    raw_b.respond(got, reply(req, 200, tag="t1", body=sdp(41042)))
    await raw_b.link.settle()
    assert len(sent_requests(raw_b, "BYE")) == 1


async def test_fork_2xx_after_the_transaction_ended(raw_b: RawB) -> None:
    inviter, _rec, got = await raw_b.invite()
    raw_b.respond(got, reply(got.request, 200, tag="t1", body=sdp(41050)))
    await raw_b.link.advance(33)  # Timer M ended the INVITE client transaction
    late = reply(got.request, 200, tag="t9", body=sdp(41052))
    raw_b.link.inject("a", late)
    await raw_b.link.settle()
    assert [a.to.tag for a in sent_requests(raw_b, "ACK")] == ["t1", "t9"]
    assert [b.to.tag for b in sent_requests(raw_b, "BYE")] == ["t9"]
    assert inviter.state is S.ESTABLISHED


async def test_offerless_invite_with_forks_answers_the_winner_in_the_ack(raw_b: RawB) -> None:
    inviter, _rec, got = await raw_b.invite(offer=False)
    req = got.request
    assert req.body == b"" and "100rel" not in req.headers.get_list("Supported")
    raw_b.respond(got, reply(req, 183, tag="o1", body=sdp(41060, session=1)))
    raw_b.respond(got, reply(req, 183, tag="o2", body=sdp(41062, session=2)))
    await raw_b.link.settle()
    forks = list(raw_b.factory.handlers)
    assert len(forks) == 2  # rule 3: one media handler per early dialog
    raw_b.respond(got, reply(req, 200, tag="o2", body=sdp(41062, session=2)))
    await raw_b.link.settle()
    assert inviter.state is S.ESTABLISHED
    ack = sent_requests(raw_b, "ACK")[0]
    assert ack.to.tag == "o2" and ack.headers.get("Content-Type") == "application/sdp"
    assert b"m=audio" in ack.body
    assert inviter.sdh is forks[1]
    assert forks[1].negotiated is not None and forks[1].negotiated.remote_port == 41062
    assert forks[0].state is SdhState.CLOSED


async def test_offerless_2xx_without_offer_fails(raw_b: RawB) -> None:
    inviter, _rec, got = await raw_b.invite(offer=False)
    raw_b.respond(got, reply(got.request, 200, tag="n1"))
    await raw_b.link.settle()
    assert raw_b.link.summary("a") == ["a INVITE", "a ACK", "a BYE"]
    assert inviter.end == SessionEnd(EndCause.FAILED, EndBy.SYSTEM, None, "no offer in the 2xx")


async def test_offerless_between_two_agents(pair: Pair) -> None:
    inviter, _rec, invitation, _brec = await pair.established(offer=False)
    invite = pair.link.sent("a", request("INVITE"))[0].message
    ok = pair.link.sent("b", response(200, "INVITE"))[0].message
    ack = pair.link.sent("a", request("ACK"))[0].message
    assert invite.body == b""
    assert b"m=audio" in ok.body and b"m=audio" in ack.body
    assert inviter.state is S.ESTABLISHED and invitation.state is S.ESTABLISHED
    a_media = inviter.sdh.negotiated  # type: ignore[union-attr]
    b_media = invitation.sdh.negotiated  # type: ignore[union-attr]
    assert a_media.remote_port == b_media.local_port
    assert b_media.remote_port == a_media.local_port


async def test_early_media_between_two_agents(pair: Pair) -> None:
    inviter, rec = await pair.call(early_media=True)
    invitation = pair.callee.last
    await invitation.progress(183, early_media=True)
    await pair.link.settle()
    assert invitation.early_media and inviter.early_media
    assert rec.calls.count(("early_media",)) == 1
    assert pair.callee.rec.progress[-1] == (183, "Session Progress", True)
    await invitation.accept()
    await pair.link.settle()
    assert inviter.state is S.ESTABLISHED
    early = pair.link.sent("b", response(183))[0].message
    ok = pair.link.sent("b", response(200, "INVITE"))[0].message
    assert early.body == ok.body  # the same answer in the 183 and the 2xx


async def test_provisional_with_sdp_from_peer_is_counted_once(raw_b: RawB) -> None:
    _inviter, rec, got = await raw_b.invite(early_media=True)
    for _ in range(2):  # a retransmitted 183 does not restart media
        raw_b.link.inject("a", reply(got.request, 183, tag="f1", body=sdp(41070)))
    await raw_b.link.settle()
    assert rec.early == 1
    assert len([e for e in raw_b.link.take("b", RequestReceived)]) == 0
