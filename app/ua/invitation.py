"""``Invitation``: an inbound INVITE session (SIP.js ``Invitation``).

The endpoint has already sent 100 Trying. API.md rules 5 and 6:

5. A 180 Ringing goes out at once unless the INVITE has ``Require: 100rel`` or
   ``auto_provisional`` is off. ``progress(reliable=True)`` sends ``Require: 100rel`` and
   ``RSeq`` (RFC 3262), retransmits until the PRACK, and rejects with 504 when none came by
   64*T1. ``accept`` waits for an outstanding PRACK. ``reject`` works until the 2xx is sent.
6. The 2xx is retransmitted until the ACK; none by 64*T1 -> BYE, the call ends ``failed``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.media import Body, MediaError
from app.sip.dialog import Dialog
from app.sip.errors import SipError
from app.sip.events import RequestReceived
from app.sip.ids import new_tag, random_below
from app.sip.message import Request, Response, make_response
from app.ua.errors import StateTransitionError
from app.ua.sdh import SessionDescriptionHandler
from app.ua.session import (
    EndBy,
    EndCause,
    Session,
    SessionEnd,
    _Pending2xx,
    body_of,
    reason_or_phrase,
    sdp_of,
)
from app.ua.state import SessionState

if TYPE_CHECKING:
    from app.ua.user_agent import UserAgent

__all__ = ["Invitation"]

log = logging.getLogger("app.ua")

_S = SessionState
# RFC 3262 §3: the first RSeq is chosen between 1 and 2**31 - 1.
_RSEQ_LIMIT = 2**31 - 1


@dataclass(slots=True)
class _Reliable:
    """A reliable provisional response waiting for its PRACK (RFC 3262 §3)."""

    rseq: int
    response: Response
    interval: float


class Invitation(Session):
    """An inbound call, handed to ``UserAgentDelegate.on_invite``."""

    direction = "inbound"

    def __init__(
        self, ua: UserAgent, event: RequestReceived, *, session_id: str | None = None
    ) -> None:
        request = event.request
        local = request.to.copy()
        local.tag = None
        remote = request.from_.copy()
        remote.tag = None
        super().__init__(
            ua,
            session_id=session_id,
            call_id=request.call_id,
            local_tag=new_tag(),
            local_identity=local,
            remote_identity=remote,
        )
        self.request = request
        self.body: Body | None = body_of(request)
        self._server_tx = event.server_tx
        self._source = event.source
        self._peer = event.source
        self._transport = event.transport.lower()
        requires = {v.strip().lower() for v in request.headers.get_list("Require")}
        supports = {v.strip().lower() for v in request.headers.get_list("Supported")}
        self._peer_100rel = "100rel" in requires or "100rel" in supports
        self.auto_provisional = ua.config.auto_provisional and "100rel" not in requires
        self._offer = sdp_of(request)  # None: offer-less INVITE, our offer goes in the 2xx
        self._answer_body: Body | None = None
        self._final_sent = False
        self._accepting = False
        self._rseq = random_below(_RSEQ_LIMIT) + 1
        self._reliable: _Reliable | None = None
        self._prack_done = asyncio.Event()
        self._prack_done.set()
        self._offer_in_reliable = False
        self._prack_answered = False
        ua.route_server_tx(event.server_tx, self)

    # ================================================================================
    # public API

    def allowed_actions(self) -> tuple[str, ...]:
        if not self._final_sent and not self.is_terminated:
            if self.state is _S.INITIAL and not self._accepting:
                return ("progress", "accept", "reject", "hangup")
            return ("reject", "hangup")
        if self.state is _S.ESTABLISHED:
            return ("bye", "hangup", "dtmf")
        return ("hangup",)

    async def progress(
        self,
        status_code: int = 180,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        reliable: bool = False,
        early_media: bool = False,
    ) -> None:
        """Send a provisional response (SIP.js ``Invitation.progress()``).

        ``reliable``: RFC 3262 (only when the caller supports 100rel, else sent
        unreliably); waits for the PRACK of an earlier reliable one first.
        ``early_media``: the SDP answer goes in it (for an offer-less INVITE, our offer,
        and only when reliable: the answer then comes in the PRACK).
        """
        if not 101 <= status_code <= 199:
            raise ValueError(f"a provisional status is 101-199, got {status_code}")
        while True:
            async with self._guard():
                if self.state is not _S.INITIAL or self._final_sent or self._accepting:
                    raise self._not_allowed("progress")
                use_reliable = reliable and self._peer_100rel
                if reliable and not use_reliable:
                    log.info("session %s: caller lacks 100rel, sent unreliably", self.id)
                if not use_reliable or self._reliable is None:
                    await self._send_provisional(
                        status_code, reason, tuple(headers), use_reliable, early_media
                    )
                    return
                waiter = self._prack_done
            await waiter.wait()  # RFC 3262 §3: one unacknowledged reliable 1xx at a time

    async def accept(self, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Send the 2xx (SIP.js ``Invitation.accept()``) with the answer, or our offer
        when the INVITE had none. Waits for an outstanding PRACK first; the session is
        ``established`` once the 2xx is sent."""
        async with self._guard():
            if self.state is not _S.INITIAL or self._final_sent or self._accepting:
                raise self._not_allowed("accept")
            self._accepting = True
            self._set_state(_S.ESTABLISHING)
        while True:
            async with self._guard():
                if self._final_sent or self.is_terminated:
                    return
                if self._reliable is None:
                    await self._send_accept(tuple(headers))
                    return
                waiter = self._prack_done
            await waiter.wait()

    async def reject(
        self,
        status_code: int = 480,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Send a final 300-699 (SIP.js ``Invitation.reject()``); allowed until the 2xx."""
        if not 300 <= status_code <= 699:
            raise ValueError(f"a rejection status is 300-699, got {status_code}")
        async with self._guard():
            if self._final_sent or self.state not in (_S.INITIAL, _S.ESTABLISHING):
                raise self._not_allowed("reject")
            end = SessionEnd(
                EndCause.REJECTED,
                EndBy.LOCAL,
                sip_code=status_code,
                reason=reason_or_phrase(status_code, reason),
            )
            self._reject_with(status_code, end, reason=reason, headers=tuple(headers))

    async def dispose(self) -> None:
        if self.state in (_S.TERMINATING, _S.TERMINATED):
            return
        if not self._final_sent:
            try:
                await self.reject()
                return
            except StateTransitionError:
                pass  # the 2xx went out meanwhile
        if self.state is _S.ESTABLISHED:
            await self.bye()

    # ================================================================================
    # internals

    def _invite_request(self) -> Request | None:
        return self.request

    def _initial_remote_cseq(self) -> int | None:
        return self.request.cseq.seq

    def _ensure_sdh(self) -> SessionDescriptionHandler:
        if self.sdh is None:
            self.sdh = self.ua.sdh_factory()
        return self.sdh

    def _response(
        self,
        status: int,
        reason: str | None,
        headers: Sequence[tuple[str, str]],
        body: Body | None,
    ) -> Response:
        # RFC 3261 §8.2.6.2 / §12.1.1: our To tag on every response, Contact on 1xx/2xx.
        resp = make_response(self.request, status, reason, to_tag=self.local_tag)
        if 101 <= status < 300:
            resp.headers.add("Contact", self.ua.contact)
        if 200 <= status < 300:
            resp.headers.add("Allow", ", ".join(self.ua.config.allow))
            if self.ua.config.supported:
                resp.headers.add("Supported", ", ".join(self.ua.config.supported))
        for name, value in headers:
            resp.headers.add(name, value)
        if body is not None:
            resp.headers.add("Content-Type", body.content_type)
            resp.body = body.content.encode()
        return resp

    def _early_dialog(self, resp: Response) -> None:
        if self.dialog is not None:
            return
        try:
            dialog = Dialog.create_uas(self.request, resp)  # RFC 3261 §12.1.1
        except SipError as exc:
            log.info("session %s: no dialog: %s", self.id, exc)
            return
        self.dialog = dialog
        self._register_dialog(dialog)

    async def _make_answer(self) -> Body:
        if self._answer_body is None:
            assert self._offer is not None
            sdh = self._ensure_sdh()
            await sdh.set_description(self._offer)
            self._answer_body = await sdh.get_description()
        return self._answer_body

    def _media_failed(self, exc: MediaError) -> None:
        status = exc.status_hint if 300 <= exc.status_hint <= 699 else 488
        end = SessionEnd(EndCause.FAILED, EndBy.SYSTEM, sip_code=status, reason=exc.cause)
        headers: tuple[tuple[str, str], ...] = ()
        if status == 415:
            headers = (("Accept", "application/sdp"),)
        elif status == 503:
            headers = (("Retry-After", "1"),)  # out of ports or sockets: transient (§21.5.4)
        self._reject_with(status, end, headers=headers)

    def _reject_with(
        self,
        status: int,
        end: SessionEnd,
        *,
        reason: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        resp = self._response(status, reason, headers, None)
        sent = self._respond(self._server_tx, resp)
        self._final_sent = True
        if sent:
            self.last_response = (status, resp.reason)
        self._terminate(end)

    def _terminate(self, end: SessionEnd) -> None:
        self._reliable = None
        self._prack_done.set()  # wake a waiting accept/progress
        super()._terminate(end)

    async def _start(self) -> None:
        """First item of the queue: checks, automatic 180, timer, ``on_invite``."""
        request = self.request
        if not request.contacts:
            # RFC 3261 §8.1.1.8: a dialog-creating request needs a Contact.
            end = SessionEnd(EndCause.REJECTED, EndBy.SYSTEM, sip_code=400, reason="no Contact")
            self._reject_with(400, end, reason="Missing Contact")
            return
        if self.body is not None and self._offer is None:
            # RFC 3261 §21.4.13
            end = SessionEnd(
                EndCause.REJECTED, EndBy.SYSTEM, sip_code=415, reason="unsupported body"
            )
            self._reject_with(415, end, headers=(("Accept", "application/sdp"),))
            return
        if self.auto_provisional:
            # Rule 5 / SIP.js autoSendAnInitialProvisionalResponse.
            await self._send_provisional(180, None, (), False, False)
        if self.ua.config.inbound_timeout > 0:
            self._arm("inbound", self.ua.config.inbound_timeout, self._on_inbound_timeout)
        delegate = self.ua.delegate
        if delegate is not None:
            try:
                delegate.on_invite(self)
            except Exception:
                log.exception("session %s: on_invite failed", self.id)

    async def _send_provisional(
        self,
        status: int,
        reason: str | None,
        headers: tuple[tuple[str, str], ...],
        reliable: bool,
        early_media: bool,
    ) -> None:
        body: Body | None = None
        if early_media:
            try:
                if self._offer is not None:
                    body = await self._make_answer()
                elif reliable and not self._offer_in_reliable:
                    body = await self._ensure_sdh().get_description()
            except MediaError as exc:
                self._media_failed(exc)
                return
        resp = self._response(status, reason, headers, body)
        rseq = 0
        if reliable:
            rseq = self._rseq
            self._rseq += 1
            resp.headers.add("Require", "100rel")  # RFC 3262 §3
            resp.headers.add("RSeq", str(rseq))
        if not self._respond(self._server_tx, resp):
            return  # a CANCEL got there first; its event ends the session
        self.last_response = (status, resp.reason)
        self._early_dialog(resp)
        if body is not None and self._offer is None:
            self._offer_in_reliable = True
        started_media = body is not None and self._offer is not None and not self.early_media
        if started_media:
            self.early_media = True
        if reliable:
            t1 = self.ua.config.t1
            self._reliable = _Reliable(rseq=rseq, response=resp, interval=t1)
            self._prack_done.clear()
            self._arm("rel", t1, self._retransmit_reliable)
            self._arm("prack", 64 * t1, self._on_prack_timeout)
        self._notify("on_progress", status, resp.reason, self.early_media)
        if started_media:
            self._notify("on_early_media")

    async def _retransmit_reliable(self) -> None:
        rel = self._reliable
        if rel is None or self._final_sent or self.is_terminated:
            return
        self._respond(self._server_tx, rel.response)
        rel.interval *= 2  # RFC 3262 §3: starts at T1, doubles each time
        self._arm("rel", rel.interval, self._retransmit_reliable)

    async def _on_prack_timeout(self) -> None:
        if self._reliable is None or self._final_sent:
            return
        # RFC 3262 §3: no PRACK within 64*T1 -> reject the INVITE with 5xx (504).
        end = SessionEnd(EndCause.FAILED, EndBy.SYSTEM, sip_code=504, reason="no PRACK")
        self._reject_with(504, end)

    async def _on_prack(self, event: RequestReceived) -> None:
        request = event.request
        rel = self._reliable
        rack = (request.headers.get("RAck") or "").split()
        if (
            rel is None
            or len(rack) != 3
            or rack[0] != str(rel.rseq)
            or rack[1] != str(self.request.cseq.seq)
            or rack[2].upper() != "INVITE"
        ):
            # RFC 3262 §3: matches no unacknowledged reliable provisional.
            self._answer(request, event.server_tx, 481)
            return
        answer = sdp_of(request)
        if self._offer_in_reliable and not self._prack_answered and answer is not None:
            # RFC 3262 §5: our offer was in the reliable 1xx, the answer is here.
            try:
                await self._ensure_sdh().set_description(answer)
            except MediaError as exc:
                log.info("session %s: answer in PRACK refused: %s", self.id, exc.cause)
            else:
                self._prack_answered = True
                if not self.early_media:
                    self.early_media = True
                    self._notify("on_early_media")
        self._answer(request, event.server_tx, 200)
        self._reliable = None
        self._disarm("rel")
        self._disarm("prack")
        self._prack_done.set()

    async def _send_accept(self, headers: tuple[tuple[str, str], ...]) -> None:
        offer_in_2xx = False
        body: Body | None
        try:
            if self._offer is not None:
                body = await self._make_answer()
            elif self._offer_in_reliable and self._prack_answered:
                body = None  # the offer/answer exchange is done (RFC 3262 §5)
            else:
                body = await self._ensure_sdh().get_description()
                offer_in_2xx = True
        except MediaError as exc:
            self._media_failed(exc)
            return
        resp = self._response(200, None, headers, body)
        if not self._respond(self._server_tx, resp):
            return  # a CANCEL got there first; its event ends the session
        self._final_sent = True
        self.last_response = (200, resp.reason)
        self._disarm("inbound")
        if self.dialog is None:
            self._early_dialog(resp)
        else:
            try:
                self.dialog.response_sent(resp)  # early -> confirmed
            except SipError as exc:
                log.info("session %s: dialog not confirmed: %s", self.id, exc)
        self._start_2xx(
            _Pending2xx(
                cseq=self.request.cseq.seq,
                server_tx=self._server_tx,
                response=resp,
                dest=self._source,
                transport=self._transport,
                offer_in_2xx=offer_in_2xx,
                initial=True,
                interval=self.ua.config.t1,
            )
        )
        self._set_state(_S.ESTABLISHED)
        self._notify("on_answered")

    async def _handle_cancel(self) -> None:
        if self._final_sent or self.is_terminated:
            return  # RFC 3261 §9.2: a CANCEL after the final response changes nothing
        # The endpoint already answered the CANCEL 200 and the INVITE 487.
        self._final_sent = True
        self.last_response = (487, "Request Terminated")
        self._terminate(SessionEnd(EndCause.CANCELED, EndBy.REMOTE))

    async def _on_bye(self, event: RequestReceived) -> None:
        if self._final_sent:
            await super()._on_bye(event)
            return
        # RFC 3261 §15: the caller ended the early dialog; the INVITE gets 487.
        self._answer(event.request, event.server_tx, 200)
        end = SessionEnd(EndCause.CANCELED, EndBy.REMOTE)
        self._reject_with(487, end)

    async def _on_inbound_timeout(self) -> None:
        if self._final_sent or self.is_terminated:
            return
        end = SessionEnd(EndCause.NO_ANSWER, EndBy.SYSTEM, sip_code=480)
        self._reject_with(480, end)

    async def _shutdown(self) -> None:
        async with self._guard():
            if self.is_terminated:
                return
            end = SessionEnd(EndCause.SHUTDOWN, EndBy.SYSTEM)
            if not self._final_sent:
                self._reject_with(503, end)
            elif self.dialog is not None:
                await self._bye_and_end(self.dialog, end)
            else:
                self._terminate(end)
