"""Outbound calls end to end: POST /v1/calls against SIPp UAS scenarios, webhooks over HTTP.

callctl runs in-process (``create_app`` with its lifespan: database, webhook dispatcher,
call service, SIP on a free 127.0.0.1 port); a real HTTP receiver on loopback collects the
signed webhooks; SIPp plays the callee (``scenarios/uas_*.xml``). Each case asserts three
views of the same call: the webhook stream (types in order, sequences 1..n, signatures), the
call object, and what SIPp received on the wire (from its message log).

Waits are on webhook deliveries and on the SIPp process, all bounded; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sipp import SippMessage, SippProcess, SippResult, SippRun, free_port, scenario, start_sipp
from webhook_receiver import Delivery, WebhookReceiver

from app.main import create_app
from app.settings import Settings

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"callctl-outbound-interop-key").decode()
#: SIPp's own bound of one run (the harness adds coreutils timeout and a Python bound).
SIPP_TIMEOUT = 20.0
#: Failure bound of one wait for SIPp to bind its port (an external process: polled).
BIND_WAIT = 10.0
#: The credentials the 407 scenario's challenge is answered with.
AUTH_USER, AUTH_PASSWORD = "alice", "wonderland-42"


@dataclass(slots=True)
class Uas:
    """A SIPp callee running one scenario for one call."""

    process: SippProcess

    @property
    def uri(self) -> str:
        return f"sip:service@127.0.0.1:{self.process.local_port}"

    async def result(self) -> SippResult:
        result = await self.process.wait()
        assert result.ok, result.describe()
        return result


@dataclass(slots=True)
class Service:
    http: httpx.AsyncClient
    receiver: WebhookReceiver
    workdir: Path

    async def uas(self, name: str, extra_args: Sequence[str] = ()) -> Uas:
        run = SippRun(
            scenario=scenario(name),
            workdir=self.workdir,
            local_port=free_port(),
            timeout=SIPP_TIMEOUT,
            extra_args=tuple(extra_args),
        )
        process = await start_sipp(run)
        await _until_bound(process)
        return Uas(process=process)

    async def dial(self, to: str, **fields: Any) -> dict[str, Any]:
        response = await self.http.post("/v1/calls", json={"to": to, **fields})
        assert response.status_code == 201, response.text
        call: dict[str, Any] = response.json()
        return call

    async def act(self, call_id: str, action: str) -> dict[str, Any]:
        response = await self.http.post(f"/v1/calls/{call_id}/{action}", json={})
        assert response.status_code == 200, response.text
        call: dict[str, Any] = response.json()
        return call

    async def get(self, call_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/calls/{call_id}")
        assert response.status_code == 200, response.text
        call: dict[str, Any] = response.json()
        return call

    async def ended(self, call_id: str, uas: Uas) -> tuple[Delivery, SippResult]:
        """The call's call.ended webhook and SIPp's finished run (either failing is shown)."""
        try:
            event = await self.receiver.wait_event("call.ended", call_id)
        except AssertionError:
            await uas.process.terminate()
            raise AssertionError((await uas.process.wait()).describe()) from None
        return event, await uas.result()

    async def event(self, event_type: str, call_id: str, uas: Uas) -> Delivery:
        try:
            return await self.receiver.wait_event(event_type, call_id)
        except AssertionError as exc:
            await uas.process.terminate()
            raise AssertionError(f"{exc}\n{(await uas.process.wait()).describe()}") from None


async def _until_bound(process: SippProcess) -> None:
    """SIPp owns its UDP port once ours cannot bind it (polled with backoff, bounded)."""
    deadline = time.monotonic() + BIND_WAIT
    delay = 0.005
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", process.local_port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return
                raise
        if process.proc.returncode is not None or time.monotonic() > deadline:
            raise AssertionError((await process.wait()).describe())
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


@pytest.fixture
async def service(database_url: str, sipp_workdir: Path) -> AsyncIterator[Service]:
    receiver = WebhookReceiver(secret=WEBHOOK_SECRET)
    await receiver.start()
    try:
        settings = Settings(
            database_url=database_url,
            sip_host="127.0.0.1",
            sip_transports="udp",
            webhook_url=receiver.url(),
            webhook_secret=WEBHOOK_SECRET,
            webhook_allow_private=True,
            webhook_retry_schedule="0.2,0.5,1",
            rtp_ports="34000-34999",
            t1_ms=100,
            t2_ms=400,
            drain_seconds=2,
        )
        app = create_app(settings, sip_port=0)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://callctl.test", timeout=10.0
            ) as http:
                yield Service(http=http, receiver=receiver, workdir=sipp_workdir)
    finally:
        await receiver.stop()


# -- checks ------------------------------------------------------------------------------------


def check_stream(receiver: WebhookReceiver, call_id: str, types: Sequence[str]) -> list[Delivery]:
    """Exactly ``types`` in order, sequences 1..n without gaps, every one signed and ours."""
    events = receiver.events(call_id)
    got = [(e.sequence, e.type) for e in events]
    assert [e.type for e in events] == list(types), got
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), got
    for event in events:
        assert event.signature_ok is True, event.headers
        assert event.headers["webhook-id"] == event.event_id
        assert event.call["id"] == call_id
        assert event.call["direction"] == "outbound"
    return events


def check_end(call: Mapping[str, Any], cause: str, by: str, sip_code: int | None = None) -> None:
    assert call["state"] == "terminated", call
    assert call["end"]["cause"] == cause, call["end"]
    assert call["end"]["by"] == by, call["end"]
    assert call["end"]["sip_code"] == sip_code, call["end"]
    assert call["ended_at"] is not None


def requests(result: SippResult, method: str) -> list[SippMessage]:
    """Requests SIPp received with this method, in order (retransmissions included)."""
    return [m for m in result.received() if m.method == method]


def tag_of(value: str | None) -> str | None:
    for part in (value or "").split(";")[1:]:
        name, _, tag = part.strip().partition("=")
        if name.lower() == "tag":
            return tag
    return None


def branch_of(message: SippMessage) -> str:
    via = message.header("Via") or ""
    for part in via.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "branch":
            return value
    raise AssertionError(f"no branch in {via!r}")


def sipp_responses(result: SippResult, status: int, method: str = "INVITE") -> list[SippMessage]:
    """Responses SIPp sent with this status to requests of this method."""
    return [
        m
        for m in result.sent()
        if m.status == status and (m.header("CSeq") or "").split()[-1:] == [method]
    ]


def sipp_sent_tags(result: SippResult, status: int) -> list[str | None]:
    """The To tags of SIPp's responses with this status to the INVITE."""
    return [tag_of(m.header("To")) for m in sipp_responses(result, status)]


def body_of(message: SippMessage) -> str:
    return message.data.split(b"\r\n\r\n", 1)[1].decode()


# -- the cases ----------------------------------------------------------------------------------


async def test_answer_then_local_bye(service: Service) -> None:
    uas = await service.uas("uas_answer.xml")
    call = await service.dial(uas.uri, client_state="case-answer")
    # The INVITE is on its way; on loopback SIPp's 200 may already have been handled.
    assert call["state"] in ("establishing", "established")
    call_id = call["id"]
    answered = await service.event("call.answered", call_id, uas)
    assert answered.call["state"] == "established"
    assert answered.call["answered_at"] is not None
    after = await service.act(call_id, "bye")
    # BYE sent; SIPp's 200 to it may already be in.
    assert after["state"] in ("terminating", "terminated")
    assert after["end"] is None or after["end"]["cause"] == "local_bye"
    ended, result = await service.ended(call_id, uas)

    events = check_stream(
        service.receiver,
        call_id,
        ["call.initiated", "call.progress", "call.answered", "call.ended"],
    )
    assert events[1].data["sip_code"] == 180
    assert all(e.call["client_state"] == "case-answer" for e in events)
    check_end(ended.call, "local_bye", "local")
    final = await service.get(call_id)
    assert final == ended.call

    [invite] = requests(result, "INVITE")
    assert invite.header("Content-Type") == "application/sdp"
    assert "m=audio" in body_of(invite)
    assert invite.header("Call-ID") == call["sip"]["call_id"]
    assert tag_of(invite.header("From")) == call["sip"]["local_tag"]
    [their_tag] = set(sipp_sent_tags(result, 200))
    assert final["sip"]["remote_tag"] == their_tag
    [ack] = requests(result, "ACK")
    [bye] = requests(result, "BYE")
    # RFC 3261 §13.2.2.4 / §15: ACK and BYE are in the confirmed dialog.
    for message, cseq in ((ack, "1 ACK"), (bye, "2 BYE")):
        assert message.header("CSeq") == cseq
        assert tag_of(message.header("To")) == their_tag
        assert tag_of(message.header("From")) == call["sip"]["local_tag"]
        assert message.header("Call-ID") == call["sip"]["call_id"]


async def test_remote_bye(service: Service) -> None:
    uas = await service.uas("uas_remote_bye.xml")
    call_id = (await service.dial(uas.uri))["id"]
    ended, result = await service.ended(call_id, uas)
    check_stream(
        service.receiver,
        call_id,
        ["call.initiated", "call.progress", "call.answered", "call.ended"],
    )
    check_end(ended.call, "remote_bye", "remote")
    assert [m.status for m in result.received() if m.status] == [200]  # our 200 to its BYE


async def test_remote_reinvite_hold_is_answered_and_shown_on_the_call(service: Service) -> None:
    uas = await service.uas("uas_reinvite_hold.xml")
    call_id = (await service.dial(uas.uri))["id"]
    ended, result = await service.ended(call_id, uas)
    check_end(ended.call, "remote_bye", "remote")
    # The far end's sendonly re-offer was answered recvonly (RFC 3264 §6.1) ...
    [reinvite_ok] = [
        m for m in result.received() if m.status == 200 and m.header("CSeq") == "1 INVITE"
    ]
    assert "a=recvonly" in body_of(reinvite_ok)
    # ... and the call shows that the far end holds us; we never held it.
    assert ended.call["hold"] == {"local": False, "remote": True}
    assert (await service.get(call_id))["hold"] == {"local": False, "remote": True}


async def test_busy_486_is_acked(service: Service) -> None:
    uas = await service.uas("uas_busy.xml")
    call_id = (await service.dial(uas.uri))["id"]
    ended, result = await service.ended(call_id, uas)
    check_stream(service.receiver, call_id, ["call.initiated", "call.ended"])
    check_end(ended.call, "rejected", "remote", 486)
    assert ended.call["last_response"] == {"code": 486, "reason": "Busy Here"}
    assert ended.call["answered_at"] is None
    [invite] = requests(result, "INVITE")
    [ack] = requests(result, "ACK")
    # RFC 3261 §17.1.1.3: the ACK of a non-2xx is part of the INVITE transaction.
    assert branch_of(ack) == branch_of(invite)
    assert ack.header("CSeq") == "1 ACK"
    assert tag_of(ack.header("To")) == sipp_sent_tags(result, 486)[0]


async def test_ring_no_answer_times_out(service: Service) -> None:
    uas = await service.uas("uas_ring_cancel.xml")
    call_id = (await service.dial(uas.uri, timeout=1))["id"]
    ended, result = await service.ended(call_id, uas)
    check_stream(service.receiver, call_id, ["call.initiated", "call.progress", "call.ended"])
    check_end(ended.call, "no_answer", "system")
    [invite] = requests(result, "INVITE")
    [cancel] = requests(result, "CANCEL")
    # RFC 3261 §9.1: the CANCEL copies the INVITE's branch, Call-ID, From, To and CSeq number.
    assert branch_of(cancel) == branch_of(invite)
    assert cancel.header("CSeq") == "1 CANCEL"
    assert cancel.header("From") == invite.header("From")
    assert cancel.header("To") == invite.header("To")
    assert len(requests(result, "ACK")) == 1  # the 487 was ACKed


async def test_local_cancel(service: Service) -> None:
    uas = await service.uas("uas_ring_cancel.xml")
    call_id = (await service.dial(uas.uri))["id"]
    await service.event("call.progress", call_id, uas)
    after = await service.act(call_id, "cancel")
    assert after["state"] == "terminating"
    ended, result = await service.ended(call_id, uas)
    check_stream(service.receiver, call_id, ["call.initiated", "call.progress", "call.ended"])
    check_end(ended.call, "canceled", "local")
    assert len(requests(result, "CANCEL")) == 1
    assert len(requests(result, "ACK")) == 1


@pytest.mark.parametrize("early_media", [True, False])
async def test_183_with_sdp(service: Service, early_media: bool) -> None:
    uas = await service.uas("uas_early_media.xml")
    call_id = (await service.dial(uas.uri, early_media=early_media))["id"]
    await service.event("call.answered", call_id, uas)
    await service.act(call_id, "bye")
    ended, result = await service.ended(call_id, uas)
    types = ["call.initiated", "call.progress"]
    if early_media:
        types.append("call.early_media")  # rule 2: the 183's answer starts media
    events = check_stream(service.receiver, call_id, [*types, "call.answered", "call.ended"])
    assert events[1].data["sip_code"] == 183
    answered = events[len(types)].call
    assert answered["early_media"] is early_media
    if early_media:
        assert events[2].call["early_media"] is True
        assert events[2].call["state"] == "establishing"
    check_end(ended.call, "local_bye", "local")
    assert len(requests(result, "ACK")) == 1


async def test_forking_second_dialog_wins(service: Service) -> None:
    uas = await service.uas("uas_fork.xml")
    call_id = (await service.dial(uas.uri))["id"]
    answered = await service.event("call.answered", call_id, uas)
    await service.act(call_id, "bye")
    ended, result = await service.ended(call_id, uas)
    events = check_stream(
        service.receiver,
        call_id,
        ["call.initiated", "call.progress", "call.progress", "call.answered", "call.ended"],
    )
    first, second = sipp_sent_tags(result, 180)
    assert first != second
    assert sipp_sent_tags(result, 200) == [second]
    # Each 180 made its own early dialog; the 200 confirmed the second one.
    assert events[1].call["sip"]["remote_tag"] in (first, second)
    assert answered.call["sip"]["remote_tag"] == second
    [ack] = requests(result, "ACK")
    [bye] = requests(result, "BYE")
    assert tag_of(ack.header("To")) == second
    assert tag_of(bye.header("To")) == second
    check_end(ended.call, "local_bye", "local")


def _digest_params(value: str) -> dict[str, str]:
    assert value.startswith("Digest "), value
    params: dict[str, str] = {}
    for part in value[len("Digest ") :].split(","):
        name, _, raw = part.strip().partition("=")
        params[name.lower()] = raw.strip().strip('"')
    return params


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # RFC 2617 digest, a test oracle


async def test_407_answered_with_a_valid_digest(service: Service) -> None:
    uas = await service.uas("uas_auth_407.xml")
    auth = {"username": AUTH_USER, "password": AUTH_PASSWORD}
    call_id = (await service.dial(uas.uri, auth=auth))["id"]
    await service.event("call.answered", call_id, uas)
    await service.act(call_id, "bye")
    ended, result = await service.ended(call_id, uas)
    check_stream(service.receiver, call_id, ["call.initiated", "call.answered", "call.ended"])
    check_end(ended.call, "local_bye", "local")
    assert AUTH_PASSWORD not in str([e.body for e in service.receiver.events(call_id)])

    first, second = requests(result, "INVITE")
    [challenge] = sipp_responses(result, 407)
    # RFC 3261 §22.3: same Call-ID and From tag, a new transaction (branch) and CSeq.
    assert second.header("Call-ID") == first.header("Call-ID")
    assert second.header("From") == first.header("From")
    assert branch_of(second) != branch_of(first)
    assert (first.header("CSeq"), second.header("CSeq")) == ("1 INVITE", "2 INVITE")
    assert first.header("Proxy-Authorization") is None
    # SIPp's verifyauth reads only Authorization (SIPP-NOTES.md): check the digest here.
    offered = _digest_params(challenge.header("Proxy-Authenticate") or "")
    given = _digest_params(second.header("Proxy-Authorization") or "")
    assert given["username"] == AUTH_USER
    assert given["realm"] == offered["realm"] == "sipp.test"
    assert given["nonce"] == offered["nonce"]
    assert given["qop"] == "auth"
    request_uri = second.start_line.split(" ")[1]
    assert given["uri"] == request_uri
    ha1 = _md5(f"{AUTH_USER}:{given['realm']}:{AUTH_PASSWORD}")
    ha2 = _md5(f"INVITE:{given['uri']}")
    expected = _md5(f"{ha1}:{given['nonce']}:{given['nc']}:{given['cnonce']}:auth:{ha2}")
    assert given["response"] == expected
    # The 407 was ACKed in its own transaction; the 200 was ACKed in the dialog.
    acks = requests(result, "ACK")
    assert [a.header("CSeq") for a in acks] == ["1 ACK", "2 ACK"]
    assert branch_of(acks[0]) == branch_of(first)


async def test_retransmitted_200_is_acked_each_time(service: Service) -> None:
    uas = await service.uas("uas_200_retransmit.xml", ["-nr"])
    call_id = (await service.dial(uas.uri))["id"]
    ended, result = await service.ended(call_id, uas)
    check_stream(service.receiver, call_id, ["call.initiated", "call.answered", "call.ended"])
    check_end(ended.call, "remote_bye", "remote")
    oks = sipp_responses(result, 200)
    assert len(oks) == 3 and len({ok.data for ok in oks}) == 1  # one 200, sent three times
    # RFC 3261 §13.2.2.4: every retransmission of the 2xx gets the same ACK again.
    acks = requests(result, "ACK")
    assert len(acks) == 3
    assert len({ack.data for ack in acks}) == 1


async def test_offerless_invite_answer_in_ack(service: Service) -> None:
    uas = await service.uas("uas_offer_in_200.xml")
    call = await service.dial(uas.uri, offer="none")
    ended, result = await service.ended(call["id"], uas)
    check_stream(
        service.receiver,
        call["id"],
        ["call.initiated", "call.progress", "call.answered", "call.ended"],
    )
    check_end(ended.call, "remote_bye", "remote")
    [invite] = requests(result, "INVITE")
    assert invite.header("Content-Length") == "0"
    assert invite.header("Content-Type") is None
    [ack] = requests(result, "ACK")
    assert ack.header("Content-Type") == "application/sdp"
    answer = body_of(ack)
    assert "m=audio" in answer and "RTP/AVP" in answer
    # RFC 3264 §6: the answer keeps the offer's codecs it supports (PCMU/PCMA).
    assert "a=rtpmap:0 PCMU/8000" in answer


async def test_idempotent_retry_dials_once(service: Service) -> None:
    uas = await service.uas("uas_busy.xml")
    body = {"to": uas.uri, "client_state": "retry"}
    key = {"Idempotency-Key": "order-42-attempt"}
    responses = await asyncio.gather(
        *(service.http.post("/v1/calls", json=body, headers=key) for _ in range(3))
    )
    assert sorted(r.status_code for r in responses) == [200, 200, 201]
    [call_id] = {r.json()["id"] for r in responses}
    ended, result = await service.ended(call_id, uas)
    later = await service.http.post("/v1/calls", json=body, headers=key)
    assert later.status_code == 200
    assert later.json() == ended.call  # the first call, as it is now
    other = await service.http.post(
        "/v1/calls", json={**body, "client_state": "different"}, headers=key
    )
    assert other.status_code == 422
    assert other.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert len({branch_of(m) for m in requests(result, "INVITE")}) == 1
    assert service.receiver.call_ids() == [call_id]
    listed = (await service.http.get("/v1/calls")).json()["data"]
    assert [c["id"] for c in listed] == [call_id]
