"""``Inviter``: an outbound INVITE session (SIP.js ``Inviter``).

The rules of docs/ua-api.md / API.md "SIP behaviour" 1-4 and 6, from SIP.js
``Inviter.invite()``:

1. One offer/answer exchange: with our offer in the INVITE, the answer applied is the
   2xx's (provisional answers are ignored for media) unless ``early_media`` is asked for.
2. ``early_media=True``: the first provisional answer starts media, and the INVITE may not
   fork any more: a 2xx from another dialog is ACKed, sent BYE and the call fails.
3. ``offer=False``: the far end offers in its responses; each early dialog gets its own
   media handler, the winning 2xx's one lives, the answer goes in the ACK.
4. The first 2xx wins; every later 2xx (another fork) is ACKed and then sent BYE.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.media import Body, MediaError
from app.sip.dialog import Dialog
from app.sip.digest import (
    DigestClient,
    challenge_header,
    choose_challenge,
    credentials_header,
)
from app.sip.endpoint import Addr
from app.sip.errors import SipError, SipParseError
from app.sip.events import ResponseReceived
from app.sip.headers import NameAddr
from app.sip.ids import new_call_id, new_tag
from app.sip.message import Headers, Request, Response
from app.sip.transactions.keys import ClientTransactionId
from app.sip.uri import SipUri, parse_uri
from app.ua.errors import StateTransitionError
from app.ua.sdh import SessionDescriptionHandler
from app.ua.session import EndBy, EndCause, Session, SessionEnd, sdp_of
from app.ua.state import SessionState

if TYPE_CHECKING:
    from app.ua.user_agent import UserAgent

__all__ = ["Credentials", "Inviter"]

log = logging.getLogger("app.ua")

_S = SessionState


@dataclass(frozen=True, slots=True)
class Credentials:
    """Username and password answering 401/407 digest challenges (one retry)."""

    username: str
    password: str


def _parse_sip_uri(text: str, what: str) -> SipUri:
    try:
        uri = parse_uri(text.strip())
    except SipParseError as exc:
        raise ValueError(f"bad {what} URI {text!r}: {exc}") from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"{what} must be a sip: URI, got {text!r}")
    return uri


def _is_reliable(resp: Response) -> int | None:
    """The RSeq of a reliable provisional response (RFC 3262 §3), else None."""
    required = [v.strip().lower() for v in resp.headers.get_list("Require")]
    value = resp.headers.get("RSeq")
    if "100rel" not in required or value is None:
        return None
    try:
        rseq = int(value.strip())
    except ValueError:
        return None
    return rseq if 1 <= rseq < 2**32 else None


class Inviter(Session):
    """An outbound call: ``Inviter(ua, "sip:bob@example.com")``, then ``await invite()``."""

    direction = "outbound"

    def __init__(
        self,
        ua: UserAgent,
        target: str,
        *,
        from_uri: str | None = None,
        display_name: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        early_media: bool = False,
        offer: bool = True,
        credentials: Credentials | None = None,
        timeout: float | None = 60.0,
        session_id: str | None = None,
    ) -> None:
        cfg = ua.config
        target_uri = _parse_sip_uri(target, "target")
        host = f"[{cfg.contact_host}]" if ":" in cfg.contact_host else cfg.contact_host
        from_parsed = _parse_sip_uri(from_uri or f"sip:{cfg.user}@{host}", "from")
        super().__init__(
            ua,
            session_id=session_id,
            call_id=new_call_id(cfg.contact_host),
            local_tag=new_tag(),
            local_identity=NameAddr(display_name=display_name, uri=from_parsed),
            remote_identity=NameAddr(uri=target_uri.copy()),
        )
        self.target = target_uri
        self.early_media_allowed = early_media
        self.offer = offer
        self.credentials = credentials
        self.timeout = timeout
        self._extra = tuple(extra_headers)
        self._cseq = 1
        self._invite: Request | None = None
        self._invite_tx: ClientTransactionId | None = None
        self._offer_body: Body | None = None
        self._early: dict[str, Dialog] = {}  # early dialogs by remote tag
        self._fork_sdh: dict[str, SessionDescriptionHandler] = {}  # offer=False
        self._fork_offer: set[str] = set()  # forks whose handler holds their offer
        self._prov_answer: dict[str, Body] = {}
        self._early_media_tag: str | None = None
        self._winner_tag: str | None = None
        self._acks: dict[str, tuple[Request, Addr, str]] = {}  # ACK per 2xx'ing fork
        self._final = False  # a final response (or timeout) ended the INVITE
        self._cancel_end: SessionEnd | None = None
        self._auth_tried = False
        self._auth_headers: tuple[tuple[str, str], ...] = ()
        self._digest = (
            DigestClient(credentials.username, credentials.password) if credentials else None
        )
        self._rseq: dict[str, int] = {}

    # ================================================================================
    # public API

    def allowed_actions(self) -> tuple[str, ...]:
        if self.state in (_S.INITIAL, _S.ESTABLISHING) and not self._final:
            return ("cancel", "hangup")
        if self.state is _S.ESTABLISHED:
            return ("bye", "hangup", "dtmf")
        return ("hangup",)

    async def invite(self) -> None:
        """Send the INVITE (SIP.js ``Inviter.invite()``); returns once it is on its way.

        A failure before anything is sent (no media port, unresolvable target) ends the
        session ``failed`` instead of raising.
        """
        async with self._guard():
            if self.state is not _S.INITIAL or self._invite is not None:
                raise self._not_allowed("invite")
            try:
                if self.offer:
                    self.sdh = self.ua.sdh_factory()
                    self._offer_body = await self.sdh.get_description()
                request = self._build_invite()
                target = await self.core.resolve(request)
                self._transport = target.transport
                self._peer = target.addr
                self._invite = request
                tx = self.core.send_request(request, target.addr, target.transport)
            except MediaError as exc:
                self._terminate(SessionEnd(EndCause.FAILED, EndBy.SYSTEM, reason=exc.cause))
                return
            except (OSError, ValueError, SipError) as exc:
                self._terminate(SessionEnd(EndCause.FAILED, EndBy.SYSTEM, reason=str(exc)))
                return
            self._track_invite(tx)
            self._set_state(_S.ESTABLISHING)
            if self.timeout is not None and self.timeout > 0:
                self._arm("ring", self.timeout, self._on_ring_timeout)

    async def cancel(self) -> None:
        """CANCEL before a final response (SIP.js ``Inviter.cancel()``).

        The session goes ``terminating`` and ends ``canceled`` (by local) at the 487; a
        2xx crossing the CANCEL is ACKed and sent BYE, the end is still ``canceled``.
        """
        async with self._guard():
            if self.state is _S.INITIAL:
                self._terminate(SessionEnd(EndCause.CANCELED, EndBy.LOCAL))
                return
            if self.state is not _S.ESTABLISHING or self._final:
                raise self._not_allowed("cancel")
            self._start_cancel(SessionEnd(EndCause.CANCELED, EndBy.LOCAL))

    async def dispose(self) -> None:
        if self.state in (_S.TERMINATING, _S.TERMINATED):
            return
        if self.state is _S.ESTABLISHED:
            await self.bye()
            return
        try:
            await self.cancel()
        except StateTransitionError:
            state: SessionState = self.state  # moved while we waited for the lock
            if state is _S.ESTABLISHED:
                await self.bye()
            elif state not in (_S.TERMINATING, _S.TERMINATED):
                raise

    # ================================================================================
    # building and sending

    def _build_invite(self) -> Request:
        cfg = self.ua.config
        h = Headers()
        if cfg.outbound_proxy:
            # RFC 3261 §8.1.2: an outbound proxy is a pre-loaded Route set (loose routing).
            proxy = _parse_sip_uri(cfg.outbound_proxy, "outbound proxy")
            proxy.params.setdefault("lr", None)
            h.add("Route", f"<{proxy}>")
        local = self.local_identity.copy()
        local.tag = self.local_tag
        h.add("From", str(local))
        h.add("To", str(NameAddr(uri=self.target.copy())))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self._cseq} INVITE")
        h.add("Contact", self.ua.contact)
        h.add("Allow", ", ".join(cfg.allow))
        # RFC 3262: we PRACK reliable provisionals; not offered for offer-less INVITEs,
        # whose offer in a reliable 1xx would need the answer in the PRACK.
        supported = [s for s in cfg.supported if self.offer or s.lower() != "100rel"]
        if supported:
            h.add("Supported", ", ".join(supported))
        if cfg.user_agent:
            h.add("User-Agent", cfg.user_agent)
        for name, value in self._extra:
            h.add(name, value)
        for name, value in self._auth_headers:
            h.add(name, value)
        body = b""
        if self._offer_body is not None:
            h.add("Content-Type", self._offer_body.content_type)
            body = self._offer_body.content.encode()
        uri = self.target.copy()
        uri.headers = {}  # RFC 3261 §19.1.5: URI headers are not part of a Request-URI
        return Request(method="INVITE", uri=str(uri), headers=h, body=body)

    def _track_invite(self, tx: ClientTransactionId) -> None:
        self._invite_tx = tx
        self._client_txs[tx] = "invite"
        self.ua.route_client_tx(tx, self)

    def _invite_request(self) -> Request | None:
        return self._invite

    def _initial_local_cseq(self) -> int | None:
        return self._cseq

    async def _send_ack(self, dialog: Dialog, tag: str, resp: Response, body: Body | None) -> None:
        """The ACK for a 2xx, built from its dialog (RFC 3261 §13.2.2.4), kept for the
        2xx's retransmissions."""
        ack = dialog.create_ack(
            resp.cseq.seq,
            body=body.content.encode() if body is not None else b"",
            content_type=body.content_type if body is not None else None,
            headers=list(self._auth_headers),  # RFC 3261 §22.1
        )
        try:
            dest, transport = await self._send_stateless(ack)
        except (OSError, ValueError, SipError) as exc:
            log.info("session %s: ACK not sent: %s", self.id, exc)
            return
        self._acks[tag] = (ack, dest, transport)

    def _resend_ack(self, tag: str) -> bool:
        cached = self._acks.get(tag)
        if cached is None:
            return False
        ack, dest, transport = cached
        self.core.send_stateless(ack, dest, transport)
        return True

    async def _ack_and_bye_fork(self, resp: Response) -> None:
        """RFC 3261 §13.2.2.4 / rule 4: a 2xx we do not want is ACKed, then sent BYE."""
        tag = resp.to.tag
        if not tag or self._invite is None:
            return
        if self._resend_ack(tag):
            return
        try:
            dialog = Dialog.create_uac(self._invite, resp)
        except SipError as exc:
            log.info("session %s: unusable 2xx from a fork: %s", self.id, exc)
            return
        await self._send_ack(dialog, tag, resp, None)
        try:
            bye = dialog.create_request("BYE")
            await self._send_request(bye, "aux")
        except (OSError, ValueError, SipError) as exc:
            log.info("session %s: BYE to a fork not sent: %s", self.id, exc)

    # ================================================================================
    # responses

    async def _handle_response(self, event: ResponseReceived, kind: str) -> None:
        if kind == "invite":
            await self._on_invite_response(event)
        elif kind in ("cancel", "prack"):
            return
        else:
            await super()._handle_response(event, kind)

    async def _handle_tx_failure(self, kind: str, reason: str, tx: ClientTransactionId) -> None:
        if kind == "invite":
            if tx == self._invite_tx and not self._final and not self.is_terminated:
                # RFC 3261 §17.1.1.2 Timer B, §17.1.4 transport error.
                self._final = True
                self._terminate(
                    self._cancel_end or SessionEnd(EndCause.FAILED, EndBy.SYSTEM, reason=reason)
                )
        elif kind not in ("cancel", "prack"):
            await super()._handle_tx_failure(kind, reason, tx)

    async def _on_invite_response(self, event: ResponseReceived) -> None:
        resp = event.response
        status = resp.status
        current = event.client_tx is None or event.client_tx == self._invite_tx
        if self._invite is not None and resp.cseq.seq != self._invite.cseq.seq:
            current = False
        if not current:
            # An INVITE of ours that a challenge replaced: only a stray 2xx matters.
            if 200 <= status < 300 and self._invite is not None:
                if resp.cseq.seq < self._invite.cseq.seq:
                    await self._ack_and_bye_fork(resp)
            return
        if status == 100:
            if not self._final and not self.is_terminated:
                self.last_response = (status, resp.reason)
                self._notify("on_trying")
        elif status < 200:
            await self._on_provisional(resp)
        elif status < 300:
            await self._on_2xx(resp)
        else:
            await self._on_failure(resp)

    async def _on_provisional(self, resp: Response) -> None:
        if self._final or self.is_terminated or self._invite is None:
            return
        self.last_response = (resp.status, resp.reason)
        canceling = self._cancel_end is not None
        tag = resp.to.tag
        if tag:
            dialog = self._early.get(tag)
            if dialog is None:
                try:
                    # RFC 3261 §12.1.2: a 1xx with a To tag makes an early dialog.
                    dialog = Dialog.create_uac(self._invite, resp)
                except SipError as exc:
                    log.info("session %s: no early dialog: %s", self.id, exc)
                    dialog = None
                if dialog is not None:
                    self._early[tag] = dialog
                    self._register_dialog(dialog)
                    if self.dialog is None:
                        self.dialog = dialog
            else:
                try:
                    dialog.receive_response(resp)
                except SipError:
                    log.debug("session %s: provisional not applied to its dialog", self.id)
            rseq = _is_reliable(resp)
            if dialog is not None and rseq is not None:
                await self._prack(dialog, resp, tag, rseq)
            if not canceling:
                await self._provisional_media(resp, tag)
        if not canceling:
            self._notify("on_progress", resp.status, resp.reason, self.early_media)

    async def _prack(self, dialog: Dialog, resp: Response, tag: str, rseq: int) -> None:
        """RFC 3262 §4: PRACK each new reliable provisional (RSeq in order)."""
        last = self._rseq.get(tag)
        if last is not None and rseq != last + 1:
            return  # a retransmission (our PRACK transaction retransmits by itself)
        self._rseq[tag] = rseq
        prack = dialog.create_request("PRACK", headers=[("RAck", f"{rseq} {resp.cseq.seq} INVITE")])
        try:
            await self._send_request(prack, "prack")
        except (OSError, ValueError, SipError) as exc:
            log.info("session %s: PRACK not sent: %s", self.id, exc)

    async def _provisional_media(self, resp: Response, tag: str) -> None:
        body = sdp_of(resp)
        if body is None:
            return
        if self.offer:
            if self.early_media_allowed and self._early_media_tag is None and self.sdh:
                try:
                    await self.sdh.set_description(body)
                except MediaError as exc:
                    log.info("session %s: early answer refused: %s", self.id, exc.cause)
                    return
                # Rule 2: the first provisional answer starts (early) media.
                self._early_media_tag = tag
                self.early_media = True
                self._notify("on_early_media")
            elif tag != self._early_media_tag:
                # Rule 1: not applied; kept in case the 2xx of this fork has no SDP.
                self._prov_answer.setdefault(tag, body)
            return
        # Rule 3: the fork offers; its own handler takes the offer.
        sdh = self._fork_sdh.get(tag)
        if sdh is None:
            sdh = self.ua.sdh_factory()
            self._fork_sdh[tag] = sdh
        try:
            await sdh.set_description(body)
        except MediaError as exc:
            log.info("session %s: offer of fork %s refused: %s", self.id, tag, exc.cause)
            return
        self._fork_offer.add(tag)

    async def _on_2xx(self, resp: Response) -> None:
        tag = resp.to.tag or ""
        if self._resend_ack(tag):
            return  # RFC 3261 §13.2.2.4: each retransmission of the 2xx gets the ACK again
        if self._winner_tag is not None or self.is_terminated or self._invite is None:
            await self._ack_and_bye_fork(resp)  # rule 4
            return
        self._final = True
        self.last_response = (resp.status, resp.reason)
        self._disarm("ring")
        self._disarm("cancel")
        if self._cancel_end is not None:
            # RFC 3261 §9.1: the CANCEL crossed the 2xx: ACK, then BYE.
            await self._ack_and_bye_fork(resp)
            self._terminate(self._cancel_end)
            return
        if self._early_media_tag is not None and tag != self._early_media_tag:
            # Rule 2: early media forbids forking.
            await self._ack_and_bye_fork(resp)
            self._terminate(
                SessionEnd(
                    EndCause.FAILED,
                    EndBy.SYSTEM,
                    sip_code=resp.status,
                    reason="2xx from another dialog than the early media one",
                )
            )
            return
        self._winner_tag = tag
        dialog = self._early.pop(tag, None)
        if dialog is not None:
            try:
                dialog.receive_response(resp)  # RFC 3261 §12.1.2: early -> confirmed
            except SipError:
                dialog = None
        if dialog is None:
            try:
                dialog = Dialog.create_uac(self._invite, resp)
            except SipError as exc:
                self._terminate(
                    SessionEnd(EndCause.FAILED, EndBy.SYSTEM, sip_code=resp.status, reason=str(exc))
                )
                return
        self.dialog = dialog
        self._register_dialog(dialog)
        for other in self._early.values():
            self._drop_dialog(other)
        self._early.clear()
        for fork_tag in [t for t in self._fork_sdh if t != tag]:
            self._fork_sdh.pop(fork_tag).close()
        failure, ack_body = await self._answer_media(resp, tag)
        await self._send_ack(dialog, tag, resp, ack_body)
        if failure is not None:
            # Unusable answer/offer: ACK (with a refusing answer if we owed one), BYE.
            await self._bye_and_end(
                dialog, SessionEnd(EndCause.FAILED, EndBy.SYSTEM, reason=failure)
            )
            return
        self._set_state(_S.ESTABLISHED)
        self._notify("on_answered")

    async def _answer_media(self, resp: Response, tag: str) -> tuple[str | None, Body | None]:
        """Apply the winning 2xx's session description; (failure text, ACK body)."""
        if self.offer:
            if self._early_media_tag == tag:
                return None, None  # rule 1: the early answer stays the answer
            body = sdp_of(resp) or self._prov_answer.get(tag)
            if body is None or self.sdh is None:
                return "no answer in the 2xx", None
            try:
                await self.sdh.set_description(body)
            except MediaError as exc:
                return exc.cause, None
            return None, None
        sdh = self._fork_sdh.pop(tag, None) or self.ua.sdh_factory()
        self.sdh = sdh
        have_offer = tag in self._fork_offer
        failure: str | None = None
        body = sdp_of(resp)
        if body is not None:
            try:
                await sdh.set_description(body)
                have_offer = True
            except MediaError as exc:
                failure = exc.cause
                # The handler keeps a refused first offer, so the ACK can refuse it.
                have_offer = True
        if not have_offer:
            return "no offer in the 2xx", None
        try:
            answer = await sdh.get_description()
        except MediaError as exc:
            return failure or exc.cause, None
        return failure, answer

    async def _on_failure(self, resp: Response) -> None:
        if self._final or self.is_terminated:
            return
        status = resp.status
        if status in (401, 407) and await self._retry_with_auth(resp):
            return
        self._final = True
        self.last_response = (status, resp.reason)
        if 300 <= status < 400:
            self._notify("on_redirect", resp)  # redirects are reported, not followed
        end = self._cancel_end or SessionEnd(
            EndCause.REJECTED, EndBy.REMOTE, sip_code=status, reason=resp.reason
        )
        self._terminate(end)

    async def _retry_with_auth(self, resp: Response) -> bool:
        """RFC 3261 §22.2/§22.3: ONE new INVITE with credentials (new branch, CSeq+1,
        same Call-ID and From tag)."""
        if (
            self._digest is None
            or self._auth_tried
            or self._cancel_end is not None
            or self._invite is None
        ):
            return False
        challenge = choose_challenge(resp.headers.get_all(challenge_header(resp.status)))
        if challenge is None:
            return False
        self._auth_tried = True
        uri = self._invite.uri
        body = self._invite.body
        try:
            value = self._digest.authorize(challenge, method="INVITE", uri=uri, body=body)
        except (SipError, ValueError) as exc:
            log.info("session %s: cannot answer the challenge: %s", self.id, exc)
            return False
        self.last_response = (resp.status, resp.reason)
        self._auth_headers = ((credentials_header(resp.status), value),)
        self._cseq += 1
        for dialog in self._early.values():
            self._drop_dialog(dialog)
        self._early.clear()
        self.dialog = None
        for sdh in self._fork_sdh.values():
            sdh.close()
        self._fork_sdh.clear()
        self._fork_offer.clear()
        self._prov_answer.clear()
        self._rseq.clear()
        request = self._build_invite()
        try:
            target = await self.core.resolve(request)
            self._invite = request
            tx = self.core.send_request(request, target.addr, target.transport)
        except (OSError, ValueError, SipError) as exc:
            self._final = True
            self._terminate(SessionEnd(EndCause.FAILED, EndBy.SYSTEM, reason=str(exc)))
            return True
        self._track_invite(tx)
        return True

    # ================================================================================
    # cancel, timers, shutdown

    def _start_cancel(self, end: SessionEnd) -> None:
        self._cancel_end = end
        self._disarm("ring")
        self._set_state(_S.TERMINATING)
        tx = self.core.send_cancel(self._invite_tx) if self._invite_tx is not None else None
        if tx is None:
            # The INVITE transaction is gone: nothing left to cancel.
            self._final = True
            self._terminate(end)
            return
        self._client_txs[tx] = "cancel"
        self.ua.route_client_tx(tx, self)
        # RFC 3261 §9.1: no final response within 64*T1 of the CANCEL -> give the INVITE up.
        self._arm("cancel", 64 * self.ua.config.t1, self._on_cancel_timeout)

    async def _on_cancel_timeout(self) -> None:
        if not self._final and self._cancel_end is not None:
            self._final = True
            self._terminate(self._cancel_end)

    async def _on_ring_timeout(self) -> None:
        if self.state is _S.ESTABLISHING and not self._final and self._cancel_end is None:
            self._start_cancel(SessionEnd(EndCause.NO_ANSWER, EndBy.SYSTEM))

    async def _shutdown(self) -> None:
        async with self._guard():
            end = SessionEnd(EndCause.SHUTDOWN, EndBy.SYSTEM)
            if self.is_terminated:
                return
            if not self._final and self._invite_tx is not None and self._cancel_end is None:
                self._cancel_end = end
                self.core.send_cancel(self._invite_tx)
                self._terminate(end)
            elif self.state is _S.ESTABLISHED and self.dialog is not None:
                await self._bye_and_end(self.dialog, end)
            else:
                self._terminate(end)

    def _close_media(self) -> None:
        super()._close_media()
        for sdh in self._fork_sdh.values():
            sdh.close()
        self._fork_sdh.clear()
