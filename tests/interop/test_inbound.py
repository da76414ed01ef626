"""Inbound calls end to end: SIPp calls callctl, a real webhook receiver (or REST) answers.

The whole service runs in-process (``create_app`` with its lifespan: SQLite in a temp file,
the webhook dispatcher, the call service, SIP on a free 127.0.0.1 UDP port), with a loopback
webhook receiver as ``CALLCTL_WEBHOOK_URL`` that checks every signature and can answer
``call.initiated`` with actions (API.md, "Webhook-driven answer flow"). SIPp plays the caller
with the project's bounded UAC scenarios (``scenarios/uac_*.xml``), whose ``ereg check_it``
actions check what callctl sent on the wire; each test then checks SIPp's message log, the
webhook events (types, order, sequences 1..n), ``GET /v1/calls/{id}/events`` and the call
object (state, end, request).

Timers are shortened through settings (``CALLCTL_T1_MS=100``, a 2 s inbound timeout) so the
cases that wait for a SIP timer stay short; nothing here sleeps or asserts on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from inbound_support import (
    EVENT_TIMEOUT,
    InboundService,
    check_api_events,
    check_end,
    check_request,
    check_stream,
    running_service,
    sipp_dialog,
    sipp_lost_count,
    sipp_methods_sent,
    sipp_statuses,
    wait_initiated,
)
from sipp import SippMessage, SippResult, same_bytes

StartService = Callable[..., AbstractAsyncContextManager[InboundService]]

INITIATED, PROGRESS, EARLY, ANSWERED, ENDED = (
    "call.initiated",
    "call.progress",
    "call.early_media",
    "call.answered",
    "call.ended",
)
#: An answered call: the automatic 180 is a call.progress (rule 5), then the 200.
ANSWERED_STREAM = [INITIATED, PROGRESS, ANSWERED, ENDED]
#: A call that rang (automatic 180) and got a final non-2xx or was cancelled.
UNANSWERED_STREAM = [INITIATED, PROGRESS, ENDED]


@pytest.fixture
def start(database_url: str, sipp_workdir: Path) -> StartService:
    """``async with start(**settings) as service``: callctl on this test's database."""

    def make(**overrides: Any) -> AbstractAsyncContextManager[InboundService]:
        return running_service(database_url=database_url, workdir=sipp_workdir, **overrides)

    return make


# -- helpers --------------------------------------------------------------------------------


def _ok(result: SippResult) -> SippResult:
    assert result.ok, result.describe()
    return result


def _invite_responses(result: SippResult, status: int) -> list[SippMessage]:
    """Responses to the INVITE with this status that SIPp received (copies included)."""
    return [
        m for m in result.responses(status) if (m.header("CSeq") or "").upper().endswith("INVITE")
    ]


def _sdp_lines(message: SippMessage) -> list[str]:
    body = message.data.split(b"\r\n\r\n", 1)[1].decode()
    return [line for line in body.split("\r\n") if line]


def _check_sdp(message: SippMessage, *, answer: bool = True) -> None:
    """callctl's SDP: our loopback address and an RTP/AVP audio stream; an answer's formats
    come from what SIPp offered (RFC 3264 §6.1)."""
    assert message.header("Content-Type") == "application/sdp", message.start_line
    lines = _sdp_lines(message)
    assert lines[0] == "v=0", lines
    assert "c=IN IP4 127.0.0.1" in lines, lines
    (media,) = [line for line in lines if line.startswith("m=audio ")]
    _m, port, proto, *formats = media.split(" ")
    assert proto == "RTP/AVP" and int(port) > 0, media
    assert formats, media
    if answer:
        assert set(formats) <= {"0", "8", "101"}, media


async def _finish(service: InboundService, count: int = 1) -> list[str]:
    """Wait for ``count`` call.ended webhooks; the ids of those calls."""
    return [event.call_id for event in await service.receiver.wait_ended(count)]


async def _verify_call(
    service: InboundService,
    call_id: str,
    *,
    types: list[str],
    cause: str,
    by: str,
    sip_code: int | frozenset[int | None] | None,
    case: str,
    with_body: bool = True,
) -> dict[str, Any]:
    """Events (webhooks and REST) and the call object of a finished call."""
    events = check_stream(service.receiver, call_id, types)
    await check_api_events(service, call_id, types)
    call = await service.get_call(call_id)
    check_end(call, cause=cause, by=by, sip_code=sip_code)
    check_request(call, case, with_body=with_body)
    assert events[-1].call["end"] == call["end"], (events[-1].call, call)
    for event in events:
        if event.type == PROGRESS:
            assert isinstance(event.data.get("sip_code"), int), event.data
    return call


# -- answered ---------------------------------------------------------------------------------


async def test_answered_by_webhook_accept_then_caller_bye(start: StartService) -> None:
    async with start() as service:
        service.receiver.answer(INITIATED, {"action": "accept"})
        result = _ok(await service.run_sipp("uac_answer_bye.xml", case="webhook-accept"))
        (call_id,) = await _finish(service)

        call = await _verify_call(
            service,
            call_id,
            types=ANSWERED_STREAM,
            cause="remote_bye",
            by="remote",
            sip_code=None,
            case="webhook-accept",
        )
    assert call["answered_at"] is not None
    assert call["last_response"] == {"code": 200, "reason": "OK"}
    # Rule 5: 100 Trying, then 180 Ringing at once, then the 200 the webhook asked for.
    assert sipp_statuses(result)[:3] == [100, 180, 200], sipp_statuses(result)
    _check_sdp(_invite_responses(result, 200)[0])
    initiated = service.receiver.find(INITIATED, call_id)[0]
    assert initiated.call["state"] == "initial"
    assert service.receiver.find(PROGRESS, call_id)[0].data["sip_code"] == 180


@pytest.mark.parametrize("how", ["rest", "webhook"])
async def test_answered_after_progress_183_with_early_media(start: StartService, how: str) -> None:
    """REST: progress(183, early_media) then accept; webhook: the same two as an action list."""
    case = f"early-media-{how}"
    async with start() as service:
        if how == "webhook":
            service.receiver.answer(
                INITIATED,
                [
                    {"action": "progress", "status_code": 183, "early_media": True},
                    {"action": "accept"},
                ],
            )
        process = await service.start_sipp("uac_early_media.xml", case=case)
        (initiated,) = await wait_initiated(service, process)
        call_id = initiated.call_id
        if how == "rest":
            progressed = await service.act_ok(
                call_id, "progress", {"status_code": 183, "early_media": True}
            )
            assert progressed["early_media"] is True, progressed
            assert progressed["last_response"]["code"] == 183, progressed
            accepted = await service.act_ok(call_id, "accept")
            # SIPp hangs up right after its ACK, so the call may already be over when the
            # answer to accept is read; it must not have ended any other way.
            assert accepted["end"] is None or accepted["end"]["cause"] == "remote_bye", accepted
            assert accepted["state"] != "initial", accepted
        result = _ok(await process.wait())
        await _finish(service)

        call = await _verify_call(
            service,
            call_id,
            types=[INITIATED, PROGRESS, PROGRESS, EARLY, ANSWERED, ENDED],
            cause="remote_bye",
            by="remote",
            sip_code=None,
            case=case,
        )
    assert call["early_media"] is True
    codes = [e.data["sip_code"] for e in service.receiver.find(PROGRESS, call_id)]
    assert codes == [180, 183], codes
    assert sipp_statuses(result)[:4] == [100, 180, 183, 200], sipp_statuses(result)
    (early,) = result.responses(183)
    _check_sdp(early)
    (ok,) = _invite_responses(result, 200)[:1]
    # One offer/answer (rule 1): the 200 repeats the answer of the 183, same session.
    assert _sdp_lines(ok) == _sdp_lines(early), (_sdp_lines(early), _sdp_lines(ok))
    # The early dialog and the confirmed one are the same dialog (same To tag).
    assert early.header("To") == ok.header("To")


@pytest.mark.parametrize("how", ["webhook", "rest"])
async def test_offer_less_invite_offer_in_200_answer_in_ack(start: StartService, how: str) -> None:
    async with start() as service:
        if how == "webhook":
            service.receiver.answer(INITIATED, {"action": "accept"})
        process = await service.start_sipp("uac_no_offer.xml", case=f"no-offer-{how}")
        if how == "rest":
            (initiated,) = await wait_initiated(service, process)
            await service.act_ok(initiated.call_id, "accept")
        result = _ok(await process.wait())
        (call_id,) = await _finish(service)

        await _verify_call(
            service,
            call_id,
            types=ANSWERED_STREAM,
            cause="remote_bye",
            by="remote",
            sip_code=None,
            case=f"no-offer-{how}",
            with_body=False,
        )
    # Our offer in the 200 (RFC 3264 §5), SIPp's answer in the ACK.
    _check_sdp(_invite_responses(result, 200)[0], answer=False)
    (ack,) = [m for m in result.sent() if m.method == "ACK"]
    assert ack.header("Content-Type") == "application/sdp"


# -- rejected, cancelled, unanswered ------------------------------------------------------


T = TypeVar("T")


def _without_repeats(items: list[T]) -> list[T]:
    """``items`` with each run of equal neighbours kept once (retransmissions)."""
    return [item for i, item in enumerate(items) if i == 0 or items[i - 1] != item]


async def test_rejected_486_by_webhook_action(start: StartService) -> None:
    async with start() as service:
        service.receiver.answer(INITIATED, {"action": "reject", "status_code": 486})
        result = _ok(await service.run_sipp("uac_reject.xml", case="webhook-reject"))
        (call_id,) = await _finish(service)

        call = await _verify_call(
            service,
            call_id,
            types=UNANSWERED_STREAM,
            cause="rejected",
            by="local",
            sip_code=486,
            case="webhook-reject",
        )
    assert call["answered_at"] is None
    assert call["last_response"]["code"] == 486, call
    statuses = sipp_statuses(result)
    # The scenario resends its INVITE after 100 ms when no answer has come yet (a loaded
    # CI machine); callctl answers each copy with its latest provisional response
    # (RFC 3261 §17.2.1), so a 100 or a 180 may come twice, but in this order.
    assert _without_repeats(statuses)[:3] == [100, 180, 486], statuses
    # SIPp ACKed the 486 inside the INVITE transaction (same branch, RFC 3261 §17.1.1.3).
    assert _without_repeats(sipp_methods_sent(result)) == ["INVITE", "ACK"]
    invite, ack = result.sent()[0], result.sent()[-1]
    assert ack.header("Via") == invite.header("Via")
    assert ack.header("To") == result.responses(486)[0].header("To")


async def test_caller_cancel_gets_200_and_487(start: StartService) -> None:
    async with start() as service:
        result = _ok(await service.run_sipp("uac_cancel.xml", case="cancel"))
        (call_id,) = await _finish(service)

        call = await _verify_call(
            service,
            call_id,
            types=UNANSWERED_STREAM,
            cause="canceled",
            by="remote",
            sip_code=frozenset({None, 487}),
            case="cancel",
        )
    assert call["answered_at"] is None
    # RFC 3261 §9.2: 200 to the CANCEL, 487 to the INVITE, which SIPp ACKed.
    cancel_ok = [m for m in result.responses(200) if m.header("CSeq") == "1 CANCEL"]
    assert len(cancel_ok) >= 1, result.describe()
    assert len(_invite_responses(result, 487)) >= 1, result.describe()
    assert sipp_methods_sent(result)[-1] == "ACK"


async def test_nobody_answers_480_after_inbound_timeout(start: StartService) -> None:
    async with start(inbound_timeout=2.0) as service:
        result = _ok(await service.run_sipp("uac_no_answer.xml", case="no-answer"))
        (call_id,) = await _finish(service)

        call = await _verify_call(
            service,
            call_id,
            types=UNANSWERED_STREAM,
            cause="no_answer",
            by="system",
            sip_code=480,
            case="no-answer",
        )
    assert call["last_response"]["code"] == 480, call
    assert sipp_statuses(result)[:3] == [100, 180, 480], sipp_statuses(result)
    assert sipp_methods_sent(result) == ["INVITE", "ACK"]


# -- reliable provisionals -------------------------------------------------------------------


async def test_require_100rel_reliable_180_prack_then_accept(start: StartService) -> None:
    async with start(t1_ms=100) as service:
        process = await service.start_sipp("uac_100rel.xml", case="100rel")
        (initiated,) = await wait_initiated(service, process)
        call_id = initiated.call_id
        # Rule 5: the INVITE requires 100rel, so no automatic 180.
        assert initiated.call["auto_provisional"] is False, initiated.call
        await service.act_ok(call_id, "progress", {"status_code": 180, "reliable": True})
        # accept waits for the PRACK of the reliable 180 (rule 5).
        await service.act_ok(call_id, "accept")
        result = _ok(await process.wait())
        await _finish(service)

        call = await _verify_call(
            service,
            call_id,
            types=ANSWERED_STREAM,
            cause="remote_bye",
            by="remote",
            sip_code=None,
            case="100rel",
        )
    headers = {k.lower(): v for k, v in call["request"]["headers"].items()}
    assert headers["require"] == ["100rel"], headers
    ringing = result.responses(180)
    assert ringing, result.describe()
    # Every copy of the 180 is the reliable one (RFC 3262 §3: Require: 100rel, RSeq).
    assert all(m.header("Require") == "100rel" for m in ringing), result.describe()
    rseq = ringing[0].header("RSeq")
    assert rseq is not None and rseq.isdigit() and 1 <= int(rseq) < 2**31, rseq
    # Retransmitted (T1 = 100 ms) while SIPp held its PRACK back 450 ms, byte for byte.
    assert len(ringing) >= 2, [m.start_line for m in result.received()]
    assert same_bytes(ringing), "retransmissions of the reliable 180 differ"
    (prack,) = [m for m in result.sent() if m.method == "PRACK"]
    assert prack.header("RAck") == f"{rseq} 1 INVITE"
    prack_ok = [m for m in result.responses(200) if m.header("CSeq") == "2 PRACK"]
    assert prack_ok, result.describe()
    # The 2xx of the INVITE came only after the PRACK was answered.
    order = [m.header("CSeq") for m in result.received() if m.status == 200]
    assert order.index("2 PRACK") < order.index("1 INVITE"), order
    _check_sdp(_invite_responses(result, 200)[0])


async def test_reliable_180_never_pracked_rejected_504(start: StartService) -> None:
    # Rule 5: no PRACK by 64*T1 (6.4 s with T1 = 100 ms) -> 504.
    async with start(t1_ms=100, t2_ms=400) as service:
        process = await service.start_sipp("uac_100rel_no_prack.xml", case="no-prack")
        (initiated,) = await wait_initiated(service, process)
        call_id = initiated.call_id
        await service.act_ok(call_id, "progress", {"status_code": 180, "reliable": True})
        result = _ok(await process.wait())
        await _finish(service)

        call = await _verify_call(
            service,
            call_id,
            types=UNANSWERED_STREAM,
            cause="failed",
            by="system",
            sip_code=504,
            case="no-prack",
        )
    assert call["last_response"]["code"] == 504, call
    ringing = result.responses(180)
    assert len(ringing) >= 3, [m.start_line for m in result.received()]
    assert same_bytes(ringing), "retransmissions of the reliable 180 differ"
    assert sipp_methods_sent(result) == ["INVITE", "ACK"]


# -- 2xx without ACK ---------------------------------------------------------------------------


async def test_no_ack_retransmits_200_then_bye_and_failed(start: StartService) -> None:
    # 64*T1 = 6.4 s with T1 = 100 ms; T2 = 400 ms caps the interval (RFC 3261 §13.3.1.4).
    async with start(t1_ms=100, t2_ms=400) as service:
        process = await service.start_sipp("uac_no_ack.xml", case="no-ack")
        (initiated,) = await wait_initiated(service, process)
        call_id = initiated.call_id
        await service.act_ok(call_id, "accept")
        result = _ok(await process.wait())
        await _finish(service)

        await _verify_call(
            service,
            call_id,
            types=ANSWERED_STREAM,
            cause="failed",
            by="system",
            sip_code=None,
            case="no-ack",
        )
    copies = _invite_responses(result, 200)
    # The 200 was retransmitted (several copies, byte for byte the same) ...
    assert len(copies) >= 3, [m.start_line for m in result.received()]
    assert same_bytes(copies), "the 2xx retransmissions differ"
    # ... until the BYE, and not after it.
    received = list(result.received())
    bye_at = next(i for i, m in enumerate(received) if m.method == "BYE")
    last_200_at = max(i for i, m in enumerate(received) if m in copies)
    assert last_200_at < bye_at, [m.start_line for m in received]
    assert "ACK" not in sipp_methods_sent(result)


# -- BYE from either side ---------------------------------------------------------------------


async def test_caller_bye_after_rest_accept_is_remote_bye(start: StartService) -> None:
    async with start() as service:
        process = await service.start_sipp("uac_answer_bye.xml", case="caller-bye")
        (initiated,) = await wait_initiated(service, process)
        await service.act_ok(initiated.call_id, "accept")
        result = _ok(await process.wait())
        (call_id,) = await _finish(service)
        assert call_id == initiated.call_id

        await _verify_call(
            service,
            call_id,
            types=ANSWERED_STREAM,
            cause="remote_bye",
            by="remote",
            sip_code=None,
            case="caller-bye",
        )
    # The 200 to SIPp's BYE.
    assert any(m.header("CSeq") == "2 BYE" for m in result.responses(200)), result.describe()


async def test_callee_bye_by_rest_is_local_bye(start: StartService) -> None:
    async with start() as service:
        process = await service.start_sipp("uac_callee_bye.xml", case="callee-bye")
        (initiated,) = await wait_initiated(service, process)
        call_id = initiated.call_id
        await service.act_ok(call_id, "accept")
        await service.receiver.wait_event(ANSWERED, call_id)
        # The BYE goes out once the ACK came (RFC 3261 §15); 200 now, the end as an event.
        await service.act_ok(call_id, "bye")
        result = _ok(await process.wait())
        await _finish(service)

        await _verify_call(
            service,
            call_id,
            types=ANSWERED_STREAM,
            cause="local_bye",
            by="local",
            sip_code=None,
            case="callee-bye",
        )
        # Anything after the end is refused (409) and sends nothing.
        late = await service.act(call_id, "bye")
        assert late.status_code == 409, late.text
    sent = sipp_methods_sent(result)
    assert sent == ["INVITE", "ACK"], sent
    (bye,) = [m for m in result.received() if m.method == "BYE"]
    ack = next(m for m in result.sent() if m.method == "ACK")
    # In-dialog: our tag is the To tag of the 200, SIPp's is the From tag of the INVITE.
    assert bye.header("Call-ID") == ack.header("Call-ID")
    assert (bye.header("From") or "").split(";tag=")[1] == (ack.header("To") or "").split(";tag=")[
        1
    ]


# -- a lossy network ---------------------------------------------------------------------------


async def _accept_every_call(service: InboundService, total: int) -> None:
    """Accept each inbound call by REST as its call.initiated arrives."""
    accepted: set[str] = set()
    receiver = service.receiver

    def pending() -> list[str]:
        return [e.call_id for e in receiver.find(INITIATED) if e.call_id not in accepted]

    while len(accepted) < total:
        await receiver.wait_for(lambda _d: bool(pending()), EVENT_TIMEOUT * 2)
        for call_id in pending():
            accepted.add(call_id)
            response = await service.act(call_id, "accept")
            # A caller that gave up first (no ACK...) would make this 409; say so.
            assert response.status_code == 200, (call_id, response.text)


async def test_ten_percent_udp_loss_still_completes_every_call(start: StartService) -> None:
    calls = 20
    async with start(t1_ms=100, t2_ms=400) as service:
        process = await service.start_sipp(
            "uac_answer_bye.xml",
            case="lossy",
            calls=calls,
            timeout=90.0,
            extra_args=("-lost", "10", "-r", "10"),
        )
        acceptor = asyncio.ensure_future(_accept_every_call(service, calls))
        try:
            result = await process.wait()
        finally:
            if not acceptor.done():
                acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acceptor
        assert result.ok, result.describe()
        ended = await _finish(service, calls)
        assert len(set(ended)) == calls, ended

        for call_id in ended:
            call = await service.get_call(call_id)
            try:
                await _verify_call(
                    service,
                    call_id,
                    types=ANSWERED_STREAM,
                    cause="remote_bye",
                    by="remote",
                    sip_code=None,
                    case="lossy",
                )
            except AssertionError as exc:
                wire = sipp_dialog(result, call["sip"]["call_id"])
                raise AssertionError(f"{exc}\nSIPp's side of {call_id}:\n{wire}") from None
        listed = await service.list_calls(direction="inbound")
        assert {c["id"] for c in listed} == set(ended)
    # SIPp really dropped messages (sent and received) and recovered by retransmissions.
    assert sipp_lost_count(result) > 0, result.stdout[-3000:]


# -- who may call in ---------------------------------------------------------------------------


async def test_inbound_digest_auth_challenge_then_call(start: StartService) -> None:
    async with start(inbound_auth="alice:s3cret-Pw") as service:
        process = await service.start_sipp(
            "uac_auth.xml", case="auth", extra_args=("-au", "alice", "-ap", "s3cret-Pw")
        )
        (initiated,) = await wait_initiated(service, process)
        await service.act_ok(initiated.call_id, "accept")
        result = _ok(await process.wait())
        (call_id,) = await _finish(service)

        call = await _verify_call(
            service,
            call_id,
            types=ANSWERED_STREAM,
            cause="remote_bye",
            by="remote",
            sip_code=None,
            case="auth",
        )
        # The challenged INVITE made no call: one call row only.
        assert [c["id"] for c in await service.list_calls()] == [call_id]
    challenges = result.responses(401)
    assert challenges, result.describe()
    # An ACK that comes after T1 lets the 401 be sent again (RFC 3261 §17.2.1, Timer G):
    # every copy answers the first INVITE.
    assert {c.header("CSeq") for c in challenges} == {"1 INVITE"}, result.describe()
    challenge = challenges[0]
    www = challenge.header("WWW-Authenticate") or ""
    assert www.startswith("Digest "), www
    assert 'realm="' in www and "nonce=" in www, www
    headers = {k.lower(): v for k, v in call["request"]["headers"].items()}
    assert headers["cseq"] == ["2 INVITE"], headers
    assert headers["authorization"][0].startswith("Digest "), headers
    assert 'username="alice"' in headers["authorization"][0], headers


async def test_inbound_digest_auth_wrong_password_refused(start: StartService) -> None:
    async with start(inbound_auth="alice:s3cret-Pw") as service:
        result = _ok(
            await service.run_sipp(
                "uac_auth_refused.xml",
                case="auth-wrong",
                extra_args=("-au", "alice", "-ap", "not-the-password"),
            )
        )
        assert await service.list_calls() == []
    finals = [s for s in sipp_statuses(result) if s >= 200]
    assert finals[0] == 401 and finals[1] in (401, 403), finals
    assert service.receiver.deliveries == []


async def test_allow_list_refuses_with_403_and_no_call(start: StartService) -> None:
    async with start(inbound_allow="10.0.0.0/8") as service:
        result = _ok(await service.run_sipp("uac_refused.xml", case="refused"))
        assert await service.list_calls() == []
    assert [s for s in sipp_statuses(result) if s >= 200] == [403]
    assert sipp_methods_sent(result) == ["INVITE", "ACK"]
    assert service.receiver.deliveries == []


# -- webhook answers that are not actions ---------------------------------------------------


@pytest.mark.parametrize("body", ["not-json", "not-an-action"])
async def test_webhook_answer_without_actions_leaves_the_call_to_rest(
    start: StartService, body: str
) -> None:
    async with start() as service:
        if body == "not-json":
            service.receiver.answer(INITIATED, raw=b"thanks, got it")
        else:
            service.receiver.answer(INITIATED, {"action": "dance"})
        process = await service.start_sipp("uac_answer_bye.xml", case="non-json")
        (initiated,) = await wait_initiated(service, process)
        call_id = initiated.call_id
        # The next event goes out only once the answer to call.initiated was handled: by
        # then nothing was run, the call waits for REST (still ringing).
        await service.receiver.wait_event(PROGRESS, call_id)
        waiting = await service.get_call(call_id)
        assert waiting["state"] == "initial" and waiting["end"] is None, waiting
        await service.act_ok(call_id, "accept")
        _ok(await process.wait())
        await _finish(service)

        await _verify_call(
            service,
            call_id,
            types=ANSWERED_STREAM,
            cause="remote_bye",
            by="remote",
            sip_code=None,
            case="non-json",
        )
        (first, *_rest) = await service.api_events(call_id)
        assert first["delivery"]["state"] == "delivered", first
